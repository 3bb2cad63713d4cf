"""Recordings reachable from every node: an archive request that reaches a node without the
recording is authenticated there and forwarded to the node holding it (its signature, its policy,
its audit), and the listing covers every node; a holder gone is a 503 with a JSON body."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from signaling.audit import iter_entries
from signaling.http.forwarding import (
    FORWARDED_HEADER,
    ForwardedCaller,
    identity_from_json,
    load_cluster_key,
    sign,
)
from tests.fixtures.servers import RunningNode, node_settings, running_node
from tests.test_archive_api import ONCOLOGIST, SURGEON, make_recording

ARCHIVIST = {"rooms": [], "depts": ["oncology", "surgery"]}


def _key_file(folder: Path, secret: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.key"
    path.write_bytes(secret)
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def _node(
    folder: Path, redis: str, key_file: Path | None, **overrides: Any
) -> AsyncIterator[RunningNode]:
    settings = node_settings(
        folder, media=False, redis=redis, cluster_key_file=key_file and str(key_file),
        **overrides,
    )  # fmt: skip
    settings.node_url = f"http://127.0.0.1:{settings.port}"
    async with running_node(settings) as node:
        yield node


async def _call(
    node: RunningNode,
    method: str,
    path: str,
    role: str = "archivist",
    headers: dict[str, str] | None = None,
    **claims: Any,
) -> tuple[int, Any, dict[str, str], bytes]:
    session = await node.session()
    claims = {**ARCHIVIST, **claims}
    token = node.token(f"user-{role}", role, **claims)
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with session.request(method, node.url + path, headers=all_headers) as response:
        raw = await response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        return response.status, parsed, dict(response.headers), raw


def _audited(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def test_a_recording_on_one_node_is_read_through_another(
    redis_url: str, tmp_path: Path
) -> None:
    key = _key_file(tmp_path / "secret", b"k" * 40)
    async with (
        _node(tmp_path / "a", redis_url, key) as a,
        _node(tmp_path / "b", redis_url, key) as b,
    ):
        assert a.node is not None and b.node is not None
        make_recording(a, "rec-on-a", participants=(ONCOLOGIST, SURGEON))
        make_recording(b, "rec-on-b")
        await a.node.forwarder.announce()
        await b.node.forwarder.announce()

        # The same answer through B as from A itself.
        status, direct, _, _ = await _call(a, "GET", "/api/recordings/rec-on-a")
        assert status == 200
        status, through_b, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a")
        assert status == 200, through_b
        assert through_b == direct
        assert {p["sub"] for p in through_b["participant_list"]} == {"dr-onc", "dr-sur"}

        # A stream, whole and in ranges, byte for byte.
        path = "/api/recordings/rec-on-a/streams/track-0"
        status, _, headers_a, whole = await _call(a, "GET", path)
        assert status == 200 and len(whole) > 100_000
        status, _, headers_b, whole_b = await _call(b, "GET", path)
        assert status == 200 and whole_b == whole
        assert headers_b["Accept-Ranges"] == "bytes"
        assert headers_b["Content-Type"] == headers_a["Content-Type"]
        status, _, headers, part = await _call(b, "GET", path, headers={"Range": "bytes=5000-5999"})
        assert status == 206 and part == whole[5000:6000]
        assert headers["Content-Range"] == f"bytes 5000-5999/{len(whole)}"

        # Verified by its holder, against its key and its audit log.
        status, report, _, _ = await _call(b, "POST", "/api/recordings/rec-on-a/verify")
        assert status == 200 and report["ok"] and report["manifest_in_audit_log"], report

        # The listing on either node covers both nodes.
        for node in (a, b):
            status, listing, _, _ = await _call(node, "GET", "/api/recordings")
            assert status == 200
            assert {r["recording_id"] for r in listing["recordings"]} == {"rec-on-a", "rec-on-b"}
            assert listing["unreachable_nodes"] == []
        status, listing, _, _ = await _call(b, "GET", "/api/recordings?department=surgery")
        assert [r["recording_id"] for r in listing["recordings"]] == ["rec-on-a"]

        # The holder decides the policy (and audits it); the forwarding node audits the hop.
        status, refused, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a", "specialist")
        assert status == 403 and refused["error"] == "not_allowed"
        status, refused, _, _ = await _call(
            b, "GET", "/api/recordings/rec-on-a", depts=["radiology"]
        )
        assert status == 403, refused
        refusals = _audited(a, "api_refused")
        assert [(e.sub, e.fields["path"]) for e in refusals] == [
            ("user-specialist", "/api/recordings/rec-on-a"),
            ("user-archivist", "/api/recordings/rec-on-a"),
        ]
        played = _audited(a, "recording_played")
        assert played and {e.sub for e in played} == {"user-archivist"}
        hops = _audited(b, "archive_forwarded")
        assert {(e.sub, e.fields["recording"], e.fields["node"]) for e in hops} == {
            ("user-archivist", "rec-on-a", a.node.settings.node_id),
            ("user-specialist", "rec-on-a", a.node.settings.node_id),
        }
        assert not _audited(b, "recording_played")

        # Not held anywhere: the usual 404, from the node asked.
        status, missing, _, _ = await _call(b, "GET", "/api/recordings/rec-nowhere")
        assert status == 404 and missing["error"] == "not_found"

        # A token revoked is refused by the node it reaches, before anything is forwarded.
        admin = b.token("it-1", "admin", depts=["it"])
        http = await b.session()
        async with http.post(
            b.url + "/api/revocations", json={"sub": "user-archivist", "reason": "left"},
            headers={"Authorization": f"Bearer {admin}"},
        ) as response:  # fmt: skip
            assert response.status == 201
        status, revoked, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a")
        assert status == 401 and revoked["error"] == "not_authenticated"


async def test_the_holder_gone_is_a_503_that_names_it(redis_url: str, tmp_path: Path) -> None:
    key = _key_file(tmp_path / "secret", b"s" * 32)
    async with _node(tmp_path / "b", redis_url, key) as b:
        async with _node(tmp_path / "a", redis_url, key) as a:
            assert a.node is not None
            make_recording(a, "rec-on-a")
            await a.node.forwarder.announce()
            a_id = a.node.settings.node_id
            status, _, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a")
            assert status == 200
        # A stopped (its heartbeat is gone at once: a clean stop).
        status, body, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a")
        assert status == 503, body
        assert body["error"] == "unavailable" and body["node"] == a_id
        assert a_id in body["message"]
        status, body, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a/streams/track-0")
        assert status == 503 and body["node"] == a_id
        status, listing, _, _ = await _call(b, "GET", "/api/recordings")
        assert status == 200 and listing["recordings"] == []
        assert listing["unreachable_nodes"] == [a_id]  # said, not hidden


async def test_without_a_cluster_key_nothing_is_forwarded(redis_url: str, tmp_path: Path) -> None:
    key = _key_file(tmp_path / "secret", b"s" * 32)
    async with (
        _node(tmp_path / "a", redis_url, key) as a,
        _node(tmp_path / "b", redis_url, None) as b,
    ):
        assert a.node is not None
        make_recording(a, "rec-on-a")
        await a.node.forwarder.announce()
        status, body, _, _ = await _call(b, "GET", "/api/recordings/rec-on-a")
        assert status == 503 and "cluster_key_file" in body["message"]


async def test_forged_altered_misdirected_or_replayed_requests_are_refused(
    redis_url: str, tmp_path: Path
) -> None:
    secret = _key_file(tmp_path / "secret", b"x" * 32)
    async with _node(tmp_path / "a", redis_url, secret) as a:
        assert a.node is not None
        make_recording(a, "rec-on-a")
        a_id = a.node.settings.node_id
        key = load_cluster_key(secret)
        identity = await a.node.verifier.verify(a.token("user-archivist", "archivist", **ARCHIVIST))
        caller = ForwardedCaller(identity, "node-b", None)
        http = await a.session()
        path = "/api/recordings/rec-on-a"

        async def send(headers: dict[str, str], method: str = "GET", body: bytes = b"") -> int:
            async with http.request(method, a.url + path, headers=headers, data=body) as r:
                if r.status != 200:
                    assert (await r.json())["error"] == "not_authenticated"
                return r.status

        good = sign(key, "GET", path, b"", caller, a_id, time.time())
        assert await send(good) == 200
        assert await send(good) == 401  # replayed
        other_key = load_cluster_key(_key_file(tmp_path / "other", b"y" * 32))
        assert await send(sign(other_key, "GET", path, b"", caller, a_id, time.time())) == 401
        assert await send(sign(key, "GET", path, b"", caller, "node-c", time.time())) == 401
        assert await send(sign(key, "GET", path, b"", caller, a_id, time.time() - 120)) == 401
        assert await send(sign(key, "GET", path + "x", b"", caller, a_id, time.time())) == 401
        assert await send({FORWARDED_HEADER: good[FORWARDED_HEADER]}) == 401
        # An identity swapped into a signed header breaks the signature.
        fresh = sign(key, "GET", path, b"", caller, a_id, time.time())
        claims = json.loads(_unb64(fresh[FORWARDED_HEADER]))
        claims["identity"]["role"] = "admin"
        assert identity_from_json(claims["identity"]).role == "admin"
        assert await send({**fresh, FORWARDED_HEADER: _b64(json.dumps(claims).encode())}) == 401
        # A body other than the one signed.
        path += "/hold"
        tampered = sign(key, "POST", path, b'{"reason":"a"}', caller, a_id, time.time())
        assert await send(tampered, "POST", b'{"reason":"b"}') == 401
        refusals = [e.reason for e in _audited(a, "api_refused")]
        assert refusals.count("forwarding_refused") == 8
        assert a.node.archive.archive.holds() == []  # the altered request placed no hold


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("secret", [b"", b"short"])
def test_a_cluster_key_file_too_short_is_refused_at_start(tmp_path: Path, secret: bytes) -> None:
    with pytest.raises(ConfigError, match="at least 32 needed"):
        load_cluster_key(_key_file(tmp_path, secret))


def test_node_url_must_be_https_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node_url must be https"):
        node_settings(tmp_path, node_url="http://node-a.hospital.local:8443")
    with pytest.raises(ConfigError, match="no path"):
        node_settings(tmp_path, node_url="https://node-a.hospital.local/api")
    assert node_settings(tmp_path, node_url="https://node-a.hospital.local:8443").node_url
