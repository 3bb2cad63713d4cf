"""A node's recordings copied to a real S3 endpoint (Swift's s3api, tests/fixtures/s3_server.py)
as they close, deleted there when shredded, and read back by a replacement node that holds the
lost node's keys (signaling/http/archive_store.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from core.errors import ConfigError, NotFound
from recorder.objectstore import RecordingObjectStore
from signaling.audit import iter_entries
from tests.fixtures.media import Participant, pid, send, state
from tests.fixtures.s3_server import S3Server
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node
from tests.test_archive_api import make_recording


def _store_settings(server: S3Server, bucket: str, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "s3-secret"
    secret.write_text(server.secret_key + "\n")
    return {
        "archive_store_url": server.endpoint_url,
        "archive_store_bucket": bucket,
        "archive_store_region": server.region,
        "archive_store_access_key_id": server.access_key,
        "archive_store_secret_key_file": str(secret),
    }


@contextlib.asynccontextmanager
async def _node(data: Path, keys: Path, store: dict[str, Any], **more: Any) -> AsyncIterator[Any]:
    settings = node_settings(data, key_dir=str(keys), **store, **more)
    async with running_node(settings) as node:
        yield node


def _audited(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def _call(node: RunningNode, method: str, path: str) -> tuple[int, Any, bytes]:
    http = await node.session()
    token = node.token("user-archivist", "archivist", rooms=[], depts=["oncology", "surgery"])
    async with http.request(
        method, node.url + path, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        raw = await response.read()
        try:
            return response.status, json.loads(raw), raw
        except ValueError:
            return response.status, None, raw


async def test_closed_recordings_are_copied_shredded_ones_deleted_and_a_replacement_reads_them(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store_settings(s3_server, bucket, tmp_path / "secret")
    keys = tmp_path / "keys-a"  # off the data volume: what a replacement node is given
    async with _node(
        tmp_path / "a", keys, store, media=False, recording_class_retention=["scratch=0"]
    ) as a:
        assert a.node is not None and a.node.archive_store is not None
        await a.node.retention_swept.wait()
        make_recording(a, "rec-kept")
        make_recording(a, "rec-scratch", recording_class="scratch")
        done = await a.node.archive_store.sync()
        assert sorted(done.stored) == ["rec-kept", "rec-scratch"] and not done.failed
        assert (await a.node.archive_store.sync()).stored == []  # nothing sent twice
        stored = {e.fields["recording"]: e for e in _audited(a, "recording_stored")}
        assert set(stored) == {"rec-kept", "rec-scratch"} and stored["rec-kept"].fields["bytes"]
        status, whole_before, _ = await _call(a, "GET", "/api/recordings/rec-kept")
        assert status == 200
        _, _, track_before = await _call(a, "GET", "/api/recordings/rec-kept/streams/track-0")

        # Retention shreds the scratch recording: its copy goes from the store, key first.
        shredded = await asyncio.to_thread(a.node.archive.archive.run_retention)
        assert shredded == ["rec-scratch"]
        done = await a.node.archive_store.sync()
        assert done.shredded == ["rec-scratch"]
        async with RecordingObjectStore(a.node.archive_store.settings) as s3:
            assert await s3.recordings() == ["rec-kept"]
            with pytest.raises(NotFound):
                await s3.key_entry("rec-scratch")
        assert [e.fields["recording"] for e in _audited(a, "recording_store_shredded")] == [
            "rec-scratch"
        ]

    # Node A is lost with its data volume; a replacement is started with A's keys only. Its
    # audit log is lost too: IT sets the heads file aside, on purpose (the node refuses to start
    # a new log over a lost one otherwise), and keeps it as evidence.
    (keys / "audit-heads.jsonl").rename(keys / "audit-heads.node-a-lost.jsonl")
    async with _node(tmp_path / "a-replacement", keys, store, media=False) as again:
        assert again.node is not None and again.node.archive_store is not None
        recordings = again.data_dir / "recordings"
        await eventually(lambda: (recordings / "rec-kept" / "manifest.json").exists(), 20)
        assert not (recordings / "rec-scratch").exists()
        status, whole_after, _ = await _call(again, "GET", "/api/recordings/rec-kept")
        assert status == 200 and whole_after == whole_before
        status, _, track_after = await _call(
            again, "GET", "/api/recordings/rec-kept/streams/track-0"
        )
        assert status == 200 and track_after == track_before
        # Verify checks every segment; it says where the recorder's own audit entry is.
        status, report, _ = await _call(again, "POST", "/api/recordings/rec-kept/verify")
        assert status == 200 and report["segments_checked"] > 0
        assert not report["manifest_in_audit_log"]
        assert [p for p in report["problems"] if "restored from the object store" in p]
        assert len(report["problems"]) == 1, report["problems"]
        restored = _audited(again, "recording_restored")
        assert [(e.outcome, e.fields["recording"]) for e in restored] == [("info", "rec-kept")]
        # Nothing is sent back: the store already holds it as it is.
        assert (await again.node.archive_store.sync()).stored == []


async def test_another_nodes_recordings_are_left_in_the_store(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store_settings(s3_server, bucket, tmp_path / "secret")
    async with _node(tmp_path / "a", tmp_path / "keys-a", store, media=False) as a:
        assert a.node is not None and a.node.archive_store is not None
        make_recording(a, "rec-of-a")
        assert (await a.node.archive_store.sync()).stored == ["rec-of-a"]
    async with _node(tmp_path / "b", tmp_path / "keys-b", store, media=False) as b:
        assert b.node is not None and b.node.archive_store is not None
        done = await b.node.archive_store.sync()
        assert done.restored == [] and not (b.data_dir / "recordings" / "rec-of-a").exists()
        status, _, _ = await _call(b, "GET", "/api/recordings/rec-of-a")
        assert status == 404


async def test_a_recording_made_in_a_room_is_copied_when_it_stops(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = _store_settings(s3_server, bucket, tmp_path / "secret")
    async with _node(
        tmp_path / "a", tmp_path / "keys", store, ice_host_addresses=["127.0.0.1"],
        recording_segment_seconds=1.0,
    ) as node:  # fmt: skip
        assert node.node is not None and node.node.archive_store is not None
        await eventually(lambda: _audited(node, "config_loaded"), 5)
        ws, joined = await node.join("dr-chair", "chair")
        chair = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
        try:
            await chair.client.publish()
            await send(chair, "request_consent")
            await send(chair, "consent", decision="granted")
            await eventually(lambda: state(chair).get("consent", {}).get(pid(chair)) == "granted")
            await send(chair, "start_recording")
            await eventually(lambda: state(chair).get("recording") is True)
            recording_id = state(chair)["recording_id"]
            await asyncio.sleep(2.0)
            await send(chair, "stop_recording")
            await eventually(lambda: state(chair).get("recording") is False, 10)
        finally:
            await chair.close()
        # Copied at once (the recorder's close nudges the store), not at the next minute.
        await eventually(
            lambda: [e for e in _audited(node, "recording_stored")
                     if e.fields["recording"] == recording_id],
            15,
        )  # fmt: skip
        async with RecordingObjectStore(node.node.archive_store.settings) as s3:
            assert recording_id in await s3.recordings()


def test_the_store_needs_its_keys_and_https_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="archive_store_access_key_id"):
        node_settings(tmp_path, archive_store_url="https://s3.hospital.local")
    with pytest.raises(ConfigError, match="https"):
        node_settings(
            tmp_path, archive_store_url="http://s3.hospital.local",
            archive_store_access_key_id="k", archive_store_secret_key_file=str(tmp_path / "s"),
        )  # fmt: skip
