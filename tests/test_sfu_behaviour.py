"""SFU behaviour with real aiortc peers: keyframes, data channels, leaving, churn, bad peers."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
from typing import Any

import pytest
from aiortc import RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket, unpack_remb_fci

from bot.client import MediaClient
from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from sfu import srtp_send
from sfu.forwarder import PublishedTrack
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually


def _count_plis(client: MediaClient) -> list[float]:
    """Times at which the publisher's session received a PLI from the SFU."""
    dtls = client.publish_pc.getTransceivers()[0].receiver.transport
    original = dtls._handle_rtcp_data
    seen: list[float] = []

    async def counting(data: bytes) -> None:
        for packet in RtcpPacket.parse(data):
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                seen.append(time.monotonic())
        await original(data)

    dtls._handle_rtcp_data = counting
    return seen


async def test_ten_subscribers_joining_at_once_cause_one_keyframe_request(
    media: MediaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Times taken on the SFU's side, where the rate limit decides: on a loaded machine the
    # publisher's loop may read two requests sent 0.5 s apart in one go.
    attached: list[float] = []
    sent: list[float] = []
    attach, send_pli = PublishedTrack.attach, PublishedTrack._send_pli

    def attaching(track: PublishedTrack, slot: Any, now: float | None = None) -> None:
        attached.append(time.monotonic())
        attach(track, slot, now)

    def sending(track: PublishedTrack) -> None:
        sent.append(time.monotonic())
        send_pli(track)

    monkeypatch.setattr(PublishedTrack, "attach", attaching)
    monkeypatch.setattr(PublishedTrack, "_send_pli", sending)
    publisher = await media.join("pub", [ReplayVideoTrack()])
    plis = _count_plis(publisher)
    await asyncio.sleep(1.0)
    plis.clear()
    sent.clear()
    subscribers = await asyncio.gather(*(media.join(f"s{i}", [], decode=False) for i in range(10)))
    await eventually(
        lambda: all(any(t.kind == "video" for t in s.stats.tracks.values()) for s in subscribers),
        timeout=30,
    )
    track = next(iter(media.server.participants["pub"].tracks.values()))
    await eventually(lambda: all(slot.started for slot in track.slots), timeout=20)
    assert len(attached) >= 10 and plis, "the publisher was asked for a keyframe"
    # The burst: at most one request per half second while the ten subscriptions arrived, and
    # one deferred to the end of the interval (on an idle machine: one, perhaps two). Requests
    # later than that answer something else (a subscriber whose first keyframe was cut by the
    # SFU's real-time bound on a loaded machine asks again); they too keep the half second.
    interval = 0.5
    span = attached[-1] - attached[-10]
    burst = [t for t in sent if t <= attached[-1] + interval * 1.2]
    assert 1 <= len(burst) <= 2 + int(span / interval), (
        f"{len(burst)} keyframe requests for 10 subscribers arriving over {span:.2f} s"
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert all(gap >= interval * 0.95 for gap in gaps), gaps


async def test_data_channel_messages_are_relayed_by_label(media: MediaHarness) -> None:
    annotate = frozenset({"publish_audio", "annotate"})
    a = await media.join("a", [ReplayAudioTrack()], permissions=annotate)
    b = await media.join("b", [ReplayAudioTrack()])
    c = await media.join("c", [])
    for client in (a, b, c):
        await client.sync()
    await eventually(lambda: all(x.received() for x in (a, b, c)), timeout=10)
    a.send_json("consilium-reliable", {"type": "chat", "client_id": "m1", "text": "hello"})
    await eventually(lambda: all(len(x.received()) == 2 for x in (a, b, c)), timeout=10)
    events = [x.received()[1] for x in (a, b, c)]
    assert events[0] == events[1] == events[2]
    assert events[0]["type"] == "event" and events[0]["author"] == "a"
    assert events[0]["text"] == "hello" and events[0]["seq"] == 1
    pointer = {"type": "pointer", "image_id": "ct", "frame": 0, "x": 1.0, "y": 2.0}
    a.send_json("consilium-lossy", pointer)
    await eventually(lambda: b.received("consilium-lossy") and c.received("consilium-lossy"), 10)
    assert b.received("consilium-lossy") == [{**pointer, "from": "a"}]
    assert c.received("consilium-lossy") == b.received("consilium-lossy")
    assert a.received("consilium-lossy") == []


async def test_leaving_frees_the_slot_for_the_next_publisher(media: MediaHarness) -> None:
    viewer = await media.join("viewer", [], decode=False)
    await media.join("first", [ReplayAudioTrack()])
    await eventually(lambda: viewer.mid_owner and "first" in viewer.mid_owner.values(), 20)
    slots_before = len(media.server.participants["viewer"].subscriber.slots)
    await media.leave("first")
    await eventually(lambda: not viewer.mid_owner, timeout=10)
    await media.join("second", [ReplayAudioTrack()])
    await eventually(lambda: "second" in viewer.mid_owner.values(), timeout=20)
    assert len(media.server.participants["viewer"].subscriber.slots) == slots_before == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_churn_leaves_nothing_behind(media: MediaHarness) -> None:
    viewer = await media.join("viewer", [], decode=False)
    await media.join("warmup", [ReplayAudioTrack(), ReplayVideoTrack()])
    await eventually(lambda: "warmup" in viewer.mid_owner.values(), timeout=20)
    await asyncio.sleep(1.0)
    await media.leave("warmup")
    await asyncio.sleep(0.5)
    gc.collect()
    fds, tasks = _open_fds(), len(asyncio.all_tasks())
    seconds = float(os.environ.get("CONSILIUM_SOAK_SECONDS", "8"))
    deadline = time.monotonic() + seconds
    cycle = 0
    while time.monotonic() < deadline:
        name = f"p{cycle}"
        await media.join(name, [ReplayAudioTrack(), ReplayVideoTrack()])
        await eventually(lambda n=name: n in viewer.mid_owner.values(), timeout=20)
        await media.leave(name)
        cycle += 1
    await asyncio.sleep(1.0)
    gc.collect()
    server = media.server
    assert set(server.participants) == {"viewer"}
    assert len(server.participants["viewer"].subscriber.slots) == 2, "slots are reused, not added"
    assert _open_fds() <= fds + 2, "sockets or transports left behind"
    leftover = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
    assert len(leftover) <= tasks + 3, f"tasks left behind: {sorted(leftover)}"
    assert cycle >= 2


async def test_garbage_rtp_and_rtcp_floods_affect_nobody_else(media: MediaHarness) -> None:
    await media.join("good", [ReplayAudioTrack()])
    viewer = await media.join("viewer", [], decode=False)
    bad = await media.join("bad", [ReplayAudioTrack()])
    dtls = bad.publish_pc.getTransceivers()[0].sender.transport
    await eventually(lambda: dtls.state == "connected", timeout=20)
    for i in range(500):
        # Garbage behind a valid SRTP envelope: wrong version, unknown SSRCs, truncated headers.
        srtp_send.send_rtp(dtls, bytes([0x80, 0x60]) + os.urandom(10 + i % 50))
        srtp_send.send_rtp(dtls, bytes([0x80, 0x7F]) + i.to_bytes(2, "big") + os.urandom(40))
    pli = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2))
    sub_dtls = viewer.subscribe_pc.getTransceivers()[0].receiver.transport
    for _ in range(2000):
        srtp_send.send_rtcp(sub_dtls, pli)
    counter: dict[str, Any] = {"before": 0}

    def good_track_packets() -> int:
        track = next(iter(media.server.participants["good"].tracks.values()))
        return track.forwarded

    counter["before"] = good_track_packets()
    await asyncio.sleep(1.0)
    assert good_track_packets() > counter["before"] + 20, "others' media kept flowing"
    assert media.server.participants["bad"].dropped >= 500
    assert not [e for e in media.errors if e[0] != "bad"]


async def test_oversized_or_foreign_sdp_is_refused(media: MediaHarness) -> None:
    import pytest

    from sfu.types import MediaError

    await media.server.join("mdt-1", "x", frozenset({"publish_audio"}))
    with pytest.raises(MediaError):
        await media.server.offer("x", "publish", "v=0\r\n" + "a=x\r\n" * 30000 + "m=audio")
    with pytest.raises(MediaError):
        await media.server.offer("x", "subscribe", "v=0\r\nm=audio 9 RTP/AVP 0\r\n")
    with pytest.raises(MediaError):
        await media.server.answer("x", "subscribe", "v=0\r\nm=audio 9 RTP/AVP 0\r\n")


async def test_subscriber_estimates_reach_the_publisher_as_remb(media: MediaHarness) -> None:
    publisher = await media.join("pub", [ReplayVideoTrack()])
    dtls = publisher.publish_pc.getTransceivers()[0].receiver.transport
    original = dtls._handle_rtcp_data
    rembs: list[int] = []

    async def counting(data: bytes) -> None:
        for packet in RtcpPacket.parse(data):
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == 15:
                rembs.append(unpack_remb_fci(packet.fci)[0])
        await original(data)

    dtls._handle_rtcp_data = counting
    await media.join("viewer", [], decode=False)
    await eventually(lambda: rembs, timeout=20)
    assert 150_000 <= rembs[-1] <= 4_000_000


async def test_participant_whose_network_dies_is_dropped_after_ice_timeout(
    media: MediaHarness, monkeypatch: Any
) -> None:
    import aioice.ice

    # RFC 7675 consent freshness: 6 missed checks. Checks every 0.2 s instead of 5 s here.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    await media.join("stays", [ReplayAudioTrack()])
    gone = await media.join("gone", [ReplayAudioTrack()])
    # Both sessions up: a network that dies then closes them both without a word, and aiortc
    # reports "closed" rather than "failed" once consent freshness runs out.
    await eventually(lambda: gone.publish_pc.connectionState == "connected", timeout=20)
    await eventually(lambda: gone.subscribe_pc.connectionState == "connected", timeout=20)
    await eventually(lambda: "gone" in media.server.participants, timeout=5)
    # The network dies: the client's sockets vanish without a word (no DTLS close, no BYE).
    for pc in (gone.publish_pc, gone.subscribe_pc):
        for transceiver in pc.getTransceivers():
            for protocol in transceiver.receiver.transport.transport._connection._protocols:
                protocol.transport.close()
    await eventually(lambda: "gone" not in media.server.participants, timeout=10)
    assert "stays" in media.server.participants
    assert ("gone", "media_failed") in {(p, e["code"]) for p, e in media.errors}
    media.clients.pop("gone")


async def test_screen_share_needs_share_screen_and_is_labelled(media: MediaHarness) -> None:
    viewer = await media.join("viewer", [], decode=False)

    async def publish_screen(participant_id: str, permissions: frozenset[str]) -> MediaClient:
        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "offer":
                sdp = await media.server.offer(participant_id, "publish", message["sdp"],
                                               screen=["0"])  # fmt: skip
                await client.handle({"type": "answer", "pc": "publish", "sdp": sdp})

        client = MediaClient(send, [ReplayVideoTrack()])
        media.clients[participant_id] = client
        await media.server.join("mdt-1", participant_id, permissions)
        await client.publish()
        return client

    await publish_screen("trainee", frozenset({"publish_video"}))
    assert ("trainee", "not_allowed") in {(p, e["code"]) for p, e in media.errors}
    await publish_screen("radiologist", frozenset({"publish_video", "share_screen"}))
    await eventually(lambda: "radiologist" in viewer.mid_owner.values(), timeout=20)
    track = next(iter(media.server.participants["radiologist"].tracks.values()))
    assert track.info.source == "screen"
    assert not media.server.participants["trainee"].tracks


async def test_a_stopped_screen_share_is_unpublished_and_can_start_again(
    media: MediaHarness,
) -> None:
    viewer = await media.join("viewer", [], decode=False)
    permissions = frozenset({"publish_video", "share_screen"})

    async def offer(client: MediaClient) -> None:
        await client.publish_pc.setLocalDescription(await client.publish_pc.createOffer())
        local = client.publish_pc.localDescription.sdp
        sdp = await media.server.offer("radiologist", "publish", local, screen=["0"])
        await client.publish_pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "offer":
            sdp = await media.server.offer("radiologist", "publish", message["sdp"], screen=["0"])
            await sharer.handle({"type": "answer", "pc": "publish", "sdp": sdp})

    sharer = MediaClient(send, [ReplayVideoTrack()])
    media.clients["radiologist"] = sharer
    await media.server.join("mdt-1", "radiologist", permissions)
    await sharer.publish()
    await eventually(lambda: "radiologist" in viewer.mid_owner.values(), timeout=20)

    # Stop sharing: the client's screen transceiver goes inactive and it offers again.
    sharer.publish_pc.getTransceivers()[0].direction = "inactive"
    await offer(sharer)
    await eventually(lambda: "radiologist" not in viewer.mid_owner.values(), timeout=5)
    assert not media.server.participants["radiologist"].tracks
    assert not media.server.rooms["mdt-1"].tracks()

    # Share again: published again, and the viewer receives it on its idle slot.
    sharer.publish_pc.getTransceivers()[0].direction = "sendonly"
    await offer(sharer)
    await eventually(lambda: "radiologist" in viewer.mid_owner.values(), timeout=10)
    track = next(iter(media.server.participants["radiologist"].tracks.values()))
    assert track.info.source == "screen"
    before = track.forwarded
    await eventually(lambda: track.forwarded > before + 20, timeout=10)
