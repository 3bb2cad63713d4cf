"""Recording with consent, end to end: a real node with its SFU, real aiortc participants
publishing pre-encoded VP8 and Opus over `/ws`, the recording on disk afterwards."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from recorder.manifest import RecordingManifest, read_manifest
from recorder.verify import verify_recording
from signaling.audit import iter_entries
from signaling.devidp import DevelopmentIdP
from tests.fixtures.media import (
    Participant,
    error_for,
    join_over_ws,
    last,
    pid,
    record_with_consent,
    send,
    state,
)
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(
        tmp_path / "data", ice_host_addresses=["127.0.0.1"], recording_segment_seconds=1.0
    )
    async with running_node(settings) as node:
        yield node


async def join(node: RunningNode, sub: str, role: str = "specialist") -> Participant:
    ws, joined = await node.join(sub, role)
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await participant.client.publish()
    return participant


def recorded(node: RunningNode, recording_id: str) -> RecordingManifest:
    return read_manifest(node.data_dir / "recordings" / recording_id)[0]


def audit(node: RunningNode, action: str) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action=action))


async def test_a_trainee_cannot_ask_for_consent_or_start_recording(node: RunningNode) -> None:
    chair = await join(node, "dr-chair", "chair")  # opens the room
    trainee = await join(node, "dr-junior", "trainee")
    try:
        for request in ("request_consent", "start_recording"):
            await send(trainee, request)
            assert (await error_for(trainee, request))["code"] == "not_allowed"
        assert not list((node.data_dir / "recordings").glob("*/manifest.json"))
        assert [e.outcome for e in audit(node, "start_recording")] == ["deny", "deny"]
    finally:
        await trainee.close()
        await chair.close()


async def test_recording_needs_every_answer_and_leaves_a_decliner_out(
    node: RunningNode,
) -> None:
    chair = await join(node, "dr-chair", "chair")
    onc = await join(node, "dr-onc")
    rad = await join(node, "dr-rad")
    people = (chair, onc, rad)
    try:
        await eventually(lambda: all(p.client.stats.frames("video") > 3 for p in people), 20)
        await send(chair, "request_consent")
        for p in people:
            await eventually(lambda p=p: last(p, "consent_requested") is not None, 5)
        notice = last(onc, "consent_requested")
        assert notice is not None and notice["requested_by"] == pid(chair)

        await send(chair, "consent", decision="granted")
        await send(onc, "consent", decision="granted", notice_version=notice["notice_version"])
        await eventually(lambda: state(chair).get("consent", {}).get(pid(onc)) == "granted", 5)
        # The radiologist has not answered: starting is refused, and nothing is recorded.
        await send(chair, "start_recording")
        refused = await error_for(chair, "start_recording")
        assert refused["code"] == "consent_missing" and "Dr-Rad" in refused["message"]
        assert not state(chair)["recording"]

        await send(rad, "consent", decision="declined")
        await eventually(lambda: state(onc).get("consent", {}).get(pid(rad)) == "declined", 5)
        await send(chair, "start_recording")
        for p in people:  # everyone sees that it runs
            await eventually(lambda p=p: state(p).get("recording") is True, 5)
        recording_id = state(rad)["recording_id"]
        await asyncio.sleep(2.5)
        await send(chair, "mark_case", label="case 2")
        await eventually(lambda: state(chair).get("cases") == ["case 2"], 5)
        await asyncio.sleep(1.5)
        await send(chair, "stop_recording")
        await eventually(lambda: state(onc).get("recording") is False, 10)
    finally:
        for p in people:
            await p.close()

    manifest = recorded(node, recording_id)
    assert manifest.status == "complete"
    owners = {t.participant_id for t in manifest.tracks}
    assert owners == {pid(chair), pid(onc)}, "the decliner's media must be left out"
    assert {t.kind for t in manifest.tracks} == {"audio", "video"}
    answers = {(c.sub, c.decision, c.method) for c in manifest.consent}
    assert answers == {("dr-chair", "granted", "client"), ("dr-onc", "granted", "client"),
                       ("dr-rad", "declined", "client")}  # fmt: skip
    assert all(c.notice_version == notice["notice_version"] for c in manifest.consent)
    assert {p.sub for p in manifest.participants} == {"dr-chair", "dr-onc", "dr-rad"}
    assert [c.label for c in manifest.cases] == ["case 2"]

    assert node.node is not None
    data_key = node.node.room_keys.keyring.unwrap(recording_id)
    public_key = node.node.audit._key.public_key()
    report = verify_recording(node.data_dir / "recordings" / recording_id, data_key, public_key)
    assert report.ok, report.problems
    assert all(report.records[t.stream] > 20 for t in manifest.tracks)

    (started,) = [e for e in audit(node, "start_recording") if e.outcome == "allow"]
    assert started.sub == "dr-chair" and started.fields["declined"] == 1
    consents = audit(node, "recording_consent")
    assert sorted((e.sub, e.fields["decision"]) for e in consents) == [
        ("dr-chair", "granted"), ("dr-onc", "granted"), ("dr-rad", "declined"),
    ]  # fmt: skip
    # The manifest's hash at stop is in the audit log (what `verify` checks).
    stopped = audit(node, "recording_stopped")
    assert stopped and stopped[-1].fields["recording"] == recording_id


async def test_a_late_joiner_is_asked_and_recorded_only_after_agreeing(
    node: RunningNode,
) -> None:
    chair = await join(node, "dr-chair", "chair")
    late: Participant | None = None
    try:
        await send(chair, "request_consent")
        await send(chair, "consent", decision="granted")
        await eventually(lambda: state(chair).get("consent", {}).get(pid(chair)) == "granted", 5)
        await send(chair, "start_recording")
        await eventually(lambda: state(chair).get("recording") is True, 5)
        recording_id = state(chair)["recording_id"]

        late = await join(node, "dr-late")
        await eventually(lambda: last(late, "consent_requested") is not None, 5)  # type: ignore[arg-type]
        await eventually(lambda: state(late).get("recording") is True, 5)  # type: ignore[arg-type]
        await eventually(lambda: late.client.stats.frames("video") > 3, 20)  # type: ignore[union-attr]
        await eventually(lambda: chair.client.stats.frames("video") > 3, 20)
        await asyncio.sleep(1.5)  # their media flows, unrecorded
        manifest = recorded(node, recording_id)
        assert pid(late) not in {t.participant_id for t in manifest.tracks}

        await send(late, "consent", decision="granted")
        await asyncio.sleep(2.5)
        await send(chair, "stop_recording")
        await eventually(lambda: state(chair).get("recording") is False, 10)
    finally:
        await chair.close()
        if late is not None:
            await late.close()
    manifest = recorded(node, recording_id)
    assert pid(late) in {t.participant_id for t in manifest.tracks}
    (answer,) = [c for c in manifest.consent if c.sub == "dr-late"]
    assert answer.decision == "granted" and answer.at_ms > 1000


async def test_recording_stops_when_the_room_empties(node: RunningNode) -> None:
    chair = await join(node, "dr-chair", "chair")
    await send(chair, "request_consent")
    await send(chair, "consent", decision="granted")
    await eventually(lambda: state(chair).get("consent", {}).get(pid(chair)) == "granted", 5)
    await send(chair, "start_recording")
    await eventually(lambda: state(chair).get("recording") is True, 5)
    recording_id = state(chair)["recording_id"]
    await chair.ws.send_json({"type": "leave"})
    await chair.close()
    await eventually(lambda: audit(node, "stop_recording"), 10)
    assert recorded(node, recording_id).status == "complete"
    (stopped,) = audit(node, "stop_recording")
    assert stopped.reason == "room_ended"


async def test_a_sigterm_mid_recording_is_audited_as_a_server_shutdown(
    serve_process: Any, loopback_ice: None
) -> None:
    # A real `consilium serve`: aiohttp closes the WebSockets (emptying the room) before its
    # clean-up runs; the recording must still be audited as ended by the shutdown.
    serve = serve_process(env={"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    token = idp.mint(sub="dr-chair", role="chair", name="Dr Chen Wei", depts=["oncology"],
                     rooms=["tumour-board"])  # fmt: skip
    async with aiohttp.ClientSession() as http:
        chair = await join_over_ws(http, serve.url, token, "tumour-board")
        try:
            recording_id = await record_with_consent(chair)
            await asyncio.sleep(1)
            assert await asyncio.to_thread(serve.stop, signal.SIGTERM) == 0
        finally:
            await chair.close()
    manifest = read_manifest(serve.data_dir / "recordings" / recording_id)[0]
    assert manifest.status == "complete"
    (stopped,) = list(iter_entries(serve.data_dir / "audit", action="stop_recording"))
    assert stopped.reason == "server_shutdown", stopped
