"""A recording on a loaded node keeps every packet, while the live subscribers are spared what
the node was late with.

A real node runs in this test's event loop; a real `consilium bot` in its own process publishes
the replayed camera and microphone, so its packets keep arriving while the node is held: a
blocking sleep in the event loop, as when other work takes the CPU, leaves them waiting in the
node's socket past `media_max_delay_s` (0.25 s, the default). An aiortc participant in this
process subscribes; a recording sink is attached to the room. Each late packet must be in the
recording and must not have been sent to the subscriber.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.media.rtp import RtpHeader, parse_header
from recorder.sink import RecordingSink
from recorder.verify import iter_packets, verify_recording
from sfu import socket_receive
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.server import MediaServer
from tests.fixtures.media import Participant
from tests.fixtures.servers import REPO, RunningNode, eventually, node_settings, running_node

DATA_KEY = bytes(range(32))
HOLD_S = 0.6
"""How long each hold keeps the node's event loop from its sockets (past the 0.25 s bound)."""
HOLDS = 4


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    saved = socket_receive.queue_delay.max_ms
    async with running_node(
        node_settings(tmp_path / "data", ice_host_addresses=["127.0.0.1"])
    ) as n:
        yield n
    socket_receive.queue_delay.max_ms = saved


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[tuple[int, bool]]]]:
    """(sequence, late) of every packet the forwarder was handed, per track id."""
    seen: dict[str, list[tuple[int, bool]]] = {}
    forward = PublishedTrack.forward

    def forwarding(
        track: PublishedTrack, data: bytes, header: RtpHeader, arrival_ms: int, late: bool = False
    ) -> None:
        seen.setdefault(track.info.track_id, []).append((header.sequence, late))
        forward(track, data, header, arrival_ms, late)

    monkeypatch.setattr(PublishedTrack, "forward", forwarding)
    yield seen


def _watch_sends(slot: OutboundSlot, sent: dict[str, set[int]]) -> None:
    """Record the source sequence number of each packet `slot` sends (its own SSRC: not RTX)."""
    send = slot.send_rtp

    def sending(packet: bytes) -> bool:
        header = parse_header(packet)
        if header.ssrc == slot.ssrc and slot.source is not None:
            source = (header.sequence - slot.seq_offset) & 0xFFFF
            sent.setdefault(slot.source.info.track_id, set()).add(source)
        return send(packet)

    slot.send_rtp = sending


def _bot(node: RunningNode, seconds: float) -> subprocess.Popen[bytes]:
    token = node.token("bot-publisher", "chair")
    return subprocess.Popen(
        [sys.executable, "-m", "consilium.cli", "bot", "--server", node.url, "--room", "mdt-1",
         "--token", token, "--seconds", str(seconds), "--no-subscribe", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_a_recording_keeps_every_packet_a_loaded_node_kept_from_subscribers(
    node: RunningNode, tmp_path: Path, handed: dict[str, list[tuple[int, bool]]]
) -> None:
    assert node.node is not None
    media: MediaServer | None = node.node.rooms.media
    assert media is not None and socket_receive.queue_delay.max_ms == 250, "the default bound"
    key = Ed25519PrivateKey.generate()
    sink = RecordingSink(tmp_path, "late-1", "mdt-1", DATA_KEY, key, record_everyone=True)
    sink.start()
    media.attach_sink("mdt-1", sink)
    ws, joined = await node.join("dr-viewer", "chair")
    assert joined["type"] == "joined", joined
    viewer = Participant(ws, joined, tracks=[])
    await viewer.client.publish()
    bot = _bot(node, seconds=30)
    sent: dict[str, set[int]] = {}
    watched: set[int] = set()
    try:
        subscriber = lambda: media.participants[joined["participant_id"]].subscriber  # noqa: E731
        await eventually(
            lambda: viewer.client.stats.frames("video") > 10 and len(subscriber().slots) == 2,
            timeout=30,
        )
        for slot in subscriber().slots:
            watched.add(id(slot))
            _watch_sends(slot, sent)
        dropped_before = socket_receive.queue_delay.dropped
        for _ in range(HOLDS):
            await asyncio.sleep(0.8)
            time.sleep(HOLD_S)  # the node's loop is busy elsewhere: media waits in its socket
        await asyncio.sleep(1.0)
        media.detach_sink("mdt-1", sink)
        room = media.room("mdt-1")
        received = {t.info.track_id: t.received for t in room.tracks()}
        late_dropped = socket_receive.queue_delay.dropped - dropped_before
    finally:
        bot.terminate()
        output, _ = await asyncio.to_thread(bot.communicate)
        await viewer.close()
    manifest = await asyncio.to_thread(sink.stop)
    assert late_dropped > 0, f"the holds made no media late:\n{output.decode()}"

    report = verify_recording(tmp_path / "late-1", DATA_KEY, key.public_key())
    assert report.ok and report.status == "complete", report.problems
    assert {t.kind for t in manifest.tracks} == {"audio", "video"}
    late_total = 0
    for track in manifest.tracks:
        stored = report.records[track.stream]
        # Every packet the forwarder was handed, late or not, is in the recording (but video
        # that came before the track's first keyframe).
        assert stored == received[track.track_id] - track.before_keyframe, (track, received)
        recorded = {
            parse_header(p.data).sequence
            for p in iter_packets(tmp_path / "late-1", DATA_KEY, track.track_id)
        }
        late = {seq for seq, was_late in handed[track.track_id] if was_late}
        late_total += len(late)
        assert late <= recorded, f"{track.kind}: late packets missing from the recording"
        # ...and none of the late ones reached the live subscriber, who did get fresh media.
        to_viewer = sent.get(track.track_id, set())
        assert to_viewer and not late & to_viewer, f"{track.kind}: late packets were forwarded"
    assert late_total > 0
