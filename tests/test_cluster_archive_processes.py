"""Recordings reachable from every node, with real `consilium serve` processes on one real
redis-server: the node holding a recording is SIGKILLed (the other answers 503 naming it, the
server going on serving), then restarted (its recordings are served through the other again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from recorder.roomkeys import open_keyring
from signaling.audit import generate_audit_key
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from tests.fixtures.recordings import record
from tests.fixtures.servers import eventually, free_port
from tests.test_archive_api import ONCOLOGIST


def _env(key_file: Path, port: int, **more: str) -> dict[str, str]:
    return {
        "CONSILIUM_NODE_ID": "node-a" if "CONSILIUM_JWKS" not in more else "node-b",
        "CONSILIUM_CLUSTER_KEY_FILE": str(key_file),
        "CONSILIUM_NODE_URL": f"http://127.0.0.1:{port}",
        "CONSILIUM_MEDIA": "false",
        **more,
    }


async def test_the_holder_killed_then_restarted(
    serve_process: Any, redis_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_bytes(b"c" * 32)
    port_a, port_b = free_port(), free_port()
    data_a = tmp_path / "a"

    # A starts once (its keys), then a finished recording is put in its archive.
    first = serve_process("--redis", redis_url, data_dir=data_a, port=port_a,
                          env=_env(key_file, port_a))  # fmt: skip
    assert first.stop() == 0
    keyring = open_keyring(data_a)
    signing_key = generate_audit_key(data_a / "keys")
    data_key = keyring.create("rec-on-a")
    record(data_a / "recordings", "rec-on-a", data_key, signing_key, participants=(ONCOLOGIST,))

    a = serve_process("--redis", redis_url, data_dir=data_a, port=port_a,
                      env=_env(key_file, port_a))  # fmt: skip
    idp = DevelopmentIdP.load_or_create(data_a)
    trust_a = {"CONSILIUM_JWKS": str(idp.jwks_path), "CONSILIUM_JWT_ISSUER": DEV_ISSUER,
               "CONSILIUM_JWT_AUDIENCE": DEV_AUDIENCE}  # fmt: skip
    b = serve_process("--redis", redis_url, data_dir=tmp_path / "b", port=port_b,
                      env=_env(key_file, port_b, **trust_a))  # fmt: skip
    token = idp.mint(sub="user-archivist", role="archivist", depts=["oncology"], rooms=[])
    headers = {"Authorization": f"Bearer {token}"}

    async with aiohttp.ClientSession() as http:

        async def through_b(path: str) -> tuple[int, Any]:
            async with http.get(b.url + path, headers=headers) as response:
                raw = await response.read()
                return response.status, json.loads(raw) if raw[:1] == b"{" else raw

        status, body = await through_b("/api/recordings/rec-on-a")
        assert status == 200 and body["recording_id"] == "rec-on-a", body
        status, listing = await through_b("/api/recordings")
        assert [r["recording_id"] for r in listing["recordings"]] == ["rec-on-a"]

        a.stop(9)  # SIGKILL: no goodbye in Redis
        status, body = await through_b("/api/recordings/rec-on-a/streams/track-0")
        assert status == 503 and body["error"] == "unavailable", body
        assert body["node"] == "node-a"
        status, listing = await through_b("/api/recordings")
        assert status == 200 and listing["recordings"] == []
        assert listing["unreachable_nodes"] == ["node-a"]  # said, not hidden
        assert (await http.get(b.url + "/healthz")).status == 200

        a = serve_process("--redis", redis_url, data_dir=data_a, port=port_a,
                          env=_env(key_file, port_a))  # fmt: skip

        async def served_again() -> bool:
            status, _ = await through_b("/api/recordings/rec-on-a")
            return status == 200

        await eventually(served_again, 10)
        status, track = await through_b("/api/recordings/rec-on-a/streams/track-0")
        assert status == 200 and isinstance(track, bytes) and len(track) > 10_000
