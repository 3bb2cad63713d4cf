"""Recording verify trusts a manifest only if the recorder vouched for it in the audit log when
the recording ended: a manifest re-signed afterwards, whose hash entered the log later, fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from recorder.manifest import read_manifest, write_manifest
from recorder.recovery import recover_interrupted
from signaling.recording_control import recorder_audit
from tests.fixtures.recordings import record_on_node
from tests.fixtures.servers import node_settings, running_node


async def test_a_manifest_hash_audited_after_the_recording_ended_is_refused(
    tmp_path: Path,
) -> None:
    async with running_node(node_settings(tmp_path / "data", media=False)) as node:
        assert node.node is not None
        done = record_on_node(node, "rec-a", seconds=2.0)
        for action, outcome, fields in done.audit:
            node.node.audit.append(action, outcome, **fields)
        http = await node.session()
        archivist = {"Authorization": f"Bearer {node.token('dr-arch', 'archivist', rooms=[])}"}
        url = node.url + "/api/recordings/rec-a/verify"
        async with http.post(url, headers=archivist) as response:
            body = await response.json()
            assert body["ok"] and body["manifest_in_audit_log"], body

        # Someone holding the signing key rewrites the manifest (here: moves its end two hours
        # back) and gets its hash into the audit log now, long after the recording ended.
        directory = node.data_dir / "recordings" / "rec-a"
        manifest, _, _ = read_manifest(directory)
        manifest.ended = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="milliseconds")
        digest = write_manifest(directory, manifest, node.node.audit_key)
        node.node.audit.append("recording_stopped", "info", room="mdt-1", recording="rec-a",
                               manifest_sha256=digest)  # fmt: skip
        async with http.post(url, headers=archivist) as response:
            body = await response.json()
        assert not body["ok"] and not body["manifest_in_audit_log"], body
        assert any("after the recording ended" in p for p in body["problems"]), body


async def test_a_recording_recovered_after_a_crash_still_verifies(tmp_path: Path) -> None:
    """Its manifest is written, and vouched for, at recovery: later than its end, but not
    later than its own last write."""
    async with running_node(node_settings(tmp_path / "data", media=False)) as node:
        assert node.node is not None
        recordings = node.data_dir / "recordings"
        done = record_on_node(node, "rec-crash", seconds=2.0)
        for action, outcome, fields in done.audit:
            node.node.audit.append(action, outcome, **fields)
        # What a crash leaves: the manifest as last written while recording.
        manifest, _, _ = read_manifest(recordings / "rec-crash")
        manifest.status, manifest.ended = "recording", None
        write_manifest(recordings / "rec-crash", manifest, node.node.audit_key)
        assert recover_interrupted(recordings, node.node.audit_key,
                                   recorder_audit(node.node.audit)) == ["rec-crash"]  # fmt: skip
        http = await node.session()
        archivist = {"Authorization": f"Bearer {node.token('dr-arch', 'archivist', rooms=[])}"}
        url = node.url + "/api/recordings/rec-crash/verify"
        async with http.post(url, headers=archivist) as response:
            body = await response.json()
        assert body["ok"] and body["interrupted"] and body["manifest_in_audit_log"], body
