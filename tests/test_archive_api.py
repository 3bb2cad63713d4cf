"""The archive over REST on a real node: search, verify, Range reads, legal hold, retention,
key rotation, and who may do which (archivist reads, admin keys and retention, nobody else)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from recorder.manifest import RecordedParticipant
from signaling.audit import iter_entries
from tests.fixtures.recordings import record, record_on_node
from tests.fixtures.servers import RunningNode, node_settings, running_node

ONCOLOGIST = RecordedParticipant("p-onc", "dr-onc", "Dr Onc", "specialist", ["oncology"])
SURGEON = RecordedParticipant("p-sur", "dr-sur", "Dr Sur", "specialist", ["surgery"])


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(
        tmp_path / "data", media=False, recording_class_retention=["scratch=0"]
    )
    async with running_node(settings) as node:
        assert node.node is not None
        await node.node.retention_swept.wait()
        yield node


def make_recording(
    node: RunningNode,
    recording_id: str,
    *,
    participants: tuple[RecordedParticipant, ...] = (ONCOLOGIST,),
    recording_class: str = "mdt",
    seconds: float = 12.0,
) -> Path:
    """A finished recording made with this node's keyring and key, audited in its log."""
    assert node.node is not None
    keyring = node.node.room_keys.keyring
    done = record(
        node.data_dir / "recordings", recording_id, keyring.create(recording_id),
        node.node.audit_key, seconds=seconds, cases_at=(4.0,), participants=participants,
        recording_class=recording_class,
    )  # fmt: skip
    for action, outcome, fields in done.audit:
        node.node.audit.append(action, outcome, **fields)
    return done.directory


async def call(
    node: RunningNode,
    method: str,
    path: str,
    role: str = "archivist",
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    session = await node.session()
    # The archivist keeps the oncology and surgery records (the recordings made here).
    token = node.token(f"user-{role}", role, rooms=[], depts=["oncology", "surgery"])
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with session.request(method, node.url + path, json=body, headers=all_headers) as response:
        raw = await response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, parsed, dict(response.headers)


def audited(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def test_the_archivist_searches_and_every_listing_is_audited(node: RunningNode) -> None:
    make_recording(node, "rec-a", participants=(ONCOLOGIST,))
    make_recording(node, "rec-b", participants=(ONCOLOGIST, SURGEON))
    status, body, _ = await call(node, "GET", "/api/recordings")
    assert status == 200
    assert {r["recording_id"] for r in body["recordings"]} == {"rec-a", "rec-b"}
    for query, expected in (
        ("department=surgery", {"rec-b"}),
        ("participant=dr-onc", {"rec-a", "rec-b"}),
        ("case=case%201", {"rec-a", "rec-b"}),
        ("room=other-room", set()),
        ("status=complete", {"rec-a", "rec-b"}),
    ):
        status, body, _ = await call(node, "GET", f"/api/recordings?{query}")
        assert status == 200, body
        assert {r["recording_id"] for r in body["recordings"]} == expected, query
    status, body, _ = await call(node, "GET", "/api/recordings/rec-b")
    assert status == 200 and body["cases"] == ["case 1"]
    assert {p["sub"] for p in body["participant_list"]} == {"dr-onc", "dr-sur"}
    assert len(audited(node, "recordings_listed")) == 6
    assert audited(node, "recording_listed")[0].fields["recording"] == "rec-b"


@pytest.mark.parametrize("role", ["admin", "specialist", "chair", "auditor"])
async def test_only_the_archivist_reads_recordings(node: RunningNode, role: str) -> None:
    make_recording(node, "rec-a")
    for method, path in (
        ("GET", "/api/recordings"),
        ("GET", "/api/recordings/rec-a"),
        ("POST", "/api/recordings/rec-a/verify"),
        ("GET", "/api/recordings/rec-a/streams/track-0"),
    ):
        status, body, _ = await call(node, method, path, role)
        assert status == 403 and body["error"] == "not_allowed", (method, path, body)


async def test_the_archivist_cannot_rotate_keys_or_run_retention(node: RunningNode) -> None:
    for method, path in (
        ("GET", "/api/keys"), ("POST", "/api/keys/rotate"), ("POST", "/api/retention/run"),
    ):  # fmt: skip
        status, body, _ = await call(node, method, path, "archivist")
        assert status == 403, (path, body)


async def test_verify_proves_an_intact_recording_and_names_tampering(node: RunningNode) -> None:
    directory = make_recording(node, "rec-a")
    status, report, _ = await call(node, "POST", "/api/recordings/rec-a/verify")
    assert status == 200 and report["ok"], report
    assert report["manifest_in_audit_log"] and report["segments_checked"] > 0

    segment = directory / "track-0" / "000000.seg"
    data = bytearray(segment.read_bytes())
    data[200] ^= 1
    segment.write_bytes(bytes(data))
    status, report, _ = await call(node, "POST", "/api/recordings/rec-a/verify")
    assert status == 200 and not report["ok"]
    assert any("track-0/000000.seg" in problem for problem in report["problems"]), report
    assert [e.outcome for e in audited(node, "recording_verified")] == ["allow", "deny"]


async def test_a_recording_that_failed_verifies_as_failed_where_it_stopped(
    node: RunningNode,
) -> None:
    done = record_on_node(node, "rec-f", seconds=12.0, participants=(ONCOLOGIST,), stop=False)
    done.sink.stop(failure="disk_full")  # as the disk watcher stops it below the floor
    for action, outcome, fields in done.audit:
        node.node.audit.append(action, outcome, **fields)
    status, details, _ = await call(node, "GET", "/api/recordings/rec-f")
    assert status == 200 and details["status"] == "failed", details
    assert details["failure"] == "disk_full" and details["stopped_at_ms"] >= 11000
    status, report, _ = await call(node, "POST", "/api/recordings/rec-f/verify")
    assert status == 200 and report["ok"] and report["manifest_in_audit_log"], report
    assert report["status"] == "failed" and report["failure"] == "disk_full"
    assert report["stopped_at_ms"] == details["stopped_at_ms"]
    status, found, _ = await call(node, "GET", "/api/recordings?status=failed")
    assert status == 200 and [r["recording_id"] for r in found["recordings"]] == ["rec-f"]


async def test_a_manifest_the_recorder_did_not_write_last_is_not_in_the_audit_log(
    node: RunningNode,
) -> None:
    # Recorded with this node's key, but none of its hashes reached this node's audit log.
    record_on_node(node, "rec-x", seconds=3.0)
    status, report, _ = await call(node, "POST", "/api/recordings/rec-x/verify")
    assert status == 200 and not report["ok"] and not report["manifest_in_audit_log"]


async def test_range_requests_read_any_part_of_a_stream(node: RunningNode) -> None:
    make_recording(node, "rec-a")
    status, whole, headers = await call(node, "GET", "/api/recordings/rec-a/streams/track-0")
    assert status == 200 and headers["Accept-Ranges"] == "bytes"
    assert isinstance(whole, bytes) and len(whole) > 100_000
    for header, (start, end) in (
        ("bytes=0-99", (0, 100)),
        ("bytes=50000-50999", (50_000, 51_000)),
        (f"bytes={len(whole) - 10}-", (len(whole) - 10, len(whole))),
        ("bytes=-25", (len(whole) - 25, len(whole))),
    ):
        status, part, headers = await call(
            node, "GET", "/api/recordings/rec-a/streams/track-0", headers={"Range": header}
        )
        assert status == 206, (header, part)
        assert part == whole[start:end], header
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(whole)}"
    status, body, headers = await call(
        node, "GET", "/api/recordings/rec-a/streams/track-0",
        headers={"Range": f"bytes={len(whole)}-"},
    )  # fmt: skip
    assert status == 416 and body["error"] == "range_not_satisfiable"
    assert headers["Content-Range"] == f"*/{len(whole)}"
    status, body, _ = await call(node, "GET", "/api/recordings/rec-a/streams/track-9")
    assert status == 404 and body["error"] == "not_found"
    assert audited(node, "recording_played")


async def test_a_range_with_a_huge_number_is_not_a_server_error(node: RunningNode) -> None:
    make_recording(node, "rec-a", seconds=3.0)
    path = "/api/recordings/rec-a/streams/track-0"
    huge = "9" * 5000  # more digits than Python parses
    status, body, _ = await call(node, "GET", path, headers={"Range": f"bytes={huge}-"})
    assert status == 416 and body["error"] == "range_not_satisfiable"
    status, whole, _ = await call(node, "GET", path)
    status, part, _ = await call(node, "GET", path, headers={"Range": f"bytes=0-{huge}"})
    assert status == 206 and part == whole  # to the end, as any last position past it
    status, part, _ = await call(node, "GET", path, headers={"Range": f"bytes=-{huge}"})
    assert status == 206 and part == whole


async def test_a_legal_hold_keeps_a_recording_through_retention(node: RunningNode) -> None:
    make_recording(node, "rec-kept", recording_class="scratch")
    make_recording(node, "rec-gone", recording_class="scratch")
    status, held, _ = await call(
        node, "POST", "/api/recordings/rec-kept/hold", body={"reason": "complaint 2026-114"}
    )
    assert status == 201 and held["by"] == "user-archivist"
    status, body, _ = await call(node, "POST", "/api/recordings/rec-gone/hold", body={})
    assert status == 400
    # The recording's details show the hold (the archive page shows it, and releases it).
    status, detail, _ = await call(node, "GET", "/api/recordings/rec-kept")
    assert detail["held"] and detail["hold"]["reason"] == "complaint 2026-114"
    status, detail, _ = await call(node, "GET", "/api/recordings/rec-gone")
    assert not detail["held"] and detail["hold"] is None

    status, body, _ = await call(node, "POST", "/api/retention/run", "admin")
    assert status == 200 and body["shredded"] == ["rec-gone"]
    status, body, _ = await call(node, "GET", "/api/recordings/rec-gone/streams/track-0")
    assert status == 410 and body["error"] == "shredded" and "shredded" in body["message"]
    status, body, _ = await call(node, "POST", "/api/recordings/rec-kept/verify")
    assert status == 200 and body["ok"]
    (shred,) = audited(node, "recording_shredded")
    assert shred.fields["recording"] == "rec-gone"

    status, body, _ = await call(node, "DELETE", "/api/recordings/rec-kept/hold")
    assert status == 200
    status, body, _ = await call(node, "POST", "/api/retention/run", "admin")
    assert body["shredded"] == ["rec-kept"]


async def test_the_player_fetches_only_the_tracks_it_shows(node: RunningNode) -> None:
    make_recording(node, "rec-a")
    status, body, _ = await call(node, "GET", "/api/recordings/rec-a/media?tracks=alice:0")
    assert status == 200 and body[:4] == bytes.fromhex("1a45dfa3")
    (played,) = audited(node, "recording_played")
    assert played.fields["tracks"] == ["alice:0"]
    status, body, _ = await call(node, "GET", "/api/recordings/rec-a/media?tracks=bob:7")
    assert status == 400 and "no track" in body["message"]


async def test_keys_rotate_under_a_new_kek_and_recordings_still_play(node: RunningNode) -> None:
    make_recording(node, "rec-a")
    status, before, _ = await call(node, "GET", "/api/keys", "admin")
    assert status == 200 and "rec-a" in {k["id"] for k in before["keys"]}
    assert all("wrapped" not in json.dumps(k) for k in before["keys"])
    status, rotated, _ = await call(node, "POST", "/api/keys/rotate", "admin")
    assert status == 200 and rotated["rewrapped"] >= 1
    assert rotated["kek_id"] != before["kek_id"]
    status, after, _ = await call(node, "GET", "/api/keys", "admin")
    assert {k["kek_id"] for k in after["keys"]} == {rotated["kek_id"]}
    status, report, _ = await call(node, "POST", "/api/recordings/rec-a/verify")
    assert status == 200 and report["ok"], report
    keys_dir = node.data_dir / "keys"
    assert (keys_dir / f"kek.retired-{before['kek_id']}.json").exists()
    assert not (keys_dir / "kek.next.json").exists()
    (entry,) = audited(node, "keys_rotated")
    assert entry.sub == "user-admin" and entry.fields["new_kek"] == rotated["kek_id"]


async def _as(node: RunningNode, method: str, path: str, token: str) -> tuple[int, Any]:
    session = await node.session()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"reason": "matter 7"} if path.endswith("/hold") and method == "POST" else None
    async with session.request(method, node.url + path, json=body, headers=headers) as response:
        raw = await response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


async def test_the_archive_is_scoped_to_the_archivists_departments(node: RunningNode) -> None:
    make_recording(node, "rec-onc", participants=(ONCOLOGIST,), seconds=3.0)
    make_recording(node, "rec-sur", participants=(SURGEON,), seconds=3.0)
    cardiology = node.token("arch-heart", "archivist", rooms=[], depts=["cardiology"])
    surgery = node.token("arch-sur", "archivist", rooms=[], depts=["surgery"])

    status, body = await _as(node, "GET", "/api/recordings", cardiology)
    assert status == 200 and body["recordings"] == []
    status, body = await _as(node, "GET", "/api/recordings", surgery)
    assert [r["recording_id"] for r in body["recordings"]] == ["rec-sur"]

    # Every read of one recording decides the same way: details, verify, a stream, the
    # player's media, the export, the bundle, the images, the legal hold.
    for method, path in (
        ("GET", "/api/recordings/rec-onc"),
        ("POST", "/api/recordings/rec-onc/verify"),
        ("GET", "/api/recordings/rec-onc/streams/events"),
        ("GET", "/api/recordings/rec-onc/media"),
        ("GET", "/api/recordings/rec-onc/annotations"),
        ("GET", "/api/recordings/rec-onc/export"),
        ("GET", "/api/recordings/rec-onc/bundle"),
        ("GET", "/api/recordings/rec-onc/images"),
        ("POST", "/api/recordings/rec-onc/hold"),
        ("DELETE", "/api/recordings/rec-onc/hold"),
    ):
        status, body = await _as(node, method, path, surgery)
        assert status == 403, (method, path, body)
        assert body["error"] == "not_allowed"
    refused = [
        e for e in iter_entries(node.data_dir / "audit", sub="arch-sur", action="api_refused")
    ]
    assert len(refused) == 10
    assert {e.reason for e in refused} == {"department_not_permitted"}
    assert {e.fields["recording"] for e in refused} == {"rec-onc"}
    assert not audited(node, "recording_exported") and not audited(node, "recording_held")
    status, _ = await _as(node, "GET", "/api/recordings/rec-sur", surgery)
    assert status == 200


async def test_the_archive_is_scoped_to_the_archivists_organisation(node: RunningNode) -> None:
    elsewhere = RecordedParticipant(
        "p-onc", "dr-onc", "Dr Onc", "specialist", ["oncology"], org="st-elsewhere"
    )
    make_recording(node, "rec-other", participants=(elsewhere,), seconds=3.0)
    ours = node.token("arch-1", "archivist", rooms=[], depts=["oncology"], org="our-hospital")
    status, body = await _as(node, "GET", "/api/recordings", ours)
    assert status == 200 and body["recordings"] == []
    status, body = await _as(node, "GET", "/api/recordings/rec-other", ours)
    assert status == 403 and "another organisation" in body["message"]
    theirs = node.token("arch-2", "archivist", rooms=[], depts=["oncology"], org="st-elsewhere")
    status, body = await _as(node, "GET", "/api/recordings", theirs)
    assert [r["recording_id"] for r in body["recordings"]] == ["rec-other"]
    assert body["recordings"][0]["organisations"] == ["st-elsewhere"]


async def test_streamed_downloads_carry_the_security_headers(node: RunningNode) -> None:
    make_recording(node, "rec-a", seconds=3.0)
    for part in ("annotations", "bundle", "media"):
        status, _, headers = await call(node, "GET", f"/api/recordings/rec-a/{part}")
        assert status == 200, part
        assert headers["X-Content-Type-Options"] == "nosniff", part
        assert "default-src 'self'" in headers["Content-Security-Policy"], part
        assert headers["Cache-Control"] == "no-store", part
        assert headers["X-Frame-Options"] == "DENY", part
