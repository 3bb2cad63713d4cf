"""ICE restart on existing peer connections (sfu/ice_restart.py), with real aiortc peers
exchanging real encoded media through a real MediaServer over loopback.

The old path is made dead the way a network change makes it: both ends' old sockets stop
reading (nothing on that path arrives any more), nothing is closed. aiortc cannot restart ICE
either, so the test client drives its own side through the same `IceRestart`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcicetransport import RTCIceTransport

from bot.client import MediaClient
from sfu import aiortc_hooks as hooks
from sfu import ice_restart
from sfu.events import MediaReconnecting, Notification
from sfu.ice_restart import _ATTRIBUTES, IceRestart, pending, remote_credentials, restart_for
from sfu.session import ParticipantMedia
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually

OFFER = "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:Ab3d\r\n" \
    "a=ice-pwd:0123456789abcdefghijkl\r\na=mid:0\r\n"  # fmt: skip


def test_credentials_are_read_from_the_first_media_section() -> None:
    assert remote_credentials(OFFER) == ("Ab3d", "0123456789abcdefghijkl")
    assert remote_credentials("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n") is None


def test_aioice_internals_a_restart_relies_on_still_exist() -> None:
    connection = aioice.ice.Connection(ice_controlling=False)
    for name in _ATTRIBUTES:
        assert hasattr(connection, name), name
    for name in ("query_consent", "gather_candidates", "connect", "add_remote_candidate"):
        assert callable(getattr(connection, name)), name
    assert callable(aioice.ice.unref_mdns_protocol)


class RoomThatListens:
    """The room's side of a participant's media, as far as reconnecting goes: what it tells
    the others."""

    room_id = "mdt-1"
    sinks: list[Any] = []

    def __init__(self) -> None:
        self.told: list[tuple[str, bool]] = []

    def media_reconnecting(self, participant_id: str, reconnecting: bool) -> None:
        self.told.append((participant_id, reconnecting))


class Decided:
    """Where a restart's `ended` is read (the restart itself is exercised live below)."""

    ended: Callable[[], None] | None = None


def test_the_room_sees_a_participant_reconnecting_until_both_sessions_restarted() -> None:
    room = RoomThatListens()
    participant = ParticipantMedia(
        room,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "a", frozenset(), lambda event: None, RTCConfiguration(),
    )  # fmt: skip
    publish, subscribe = Decided(), Decided()
    participant.ice_restart_began(publish, "publish")  # type: ignore[arg-type]
    participant.ice_restart_began(subscribe, "subscribe")  # type: ignore[arg-type]
    assert room.told == [("a", True)]  # one network change, one "reconnecting"
    assert publish.ended is not None and subscribe.ended is not None
    publish.ended()
    assert room.told == [("a", True)]  # the subscribe session is still looking
    subscribe.ended()
    assert room.told == [("a", True), ("a", False)]
    again = Decided()
    participant.ice_restart_began(again, "publish")  # type: ignore[arg-type]
    assert room.told[-1] == ("a", True)


def _ice(pc: Any) -> RTCIceTransport:
    transport: RTCIceTransport = hooks.transport_of(pc.getTransceivers()[0]).transport
    return transport


def _cut(connection: aioice.ice.Connection) -> None:
    """The path dies: this end's current sockets receive nothing more (not closed, as when an
    interface goes away)."""
    for protocol in connection._protocols:
        protocol.transport.pause_reading()


def _local_ports(connection: aioice.ice.Connection) -> set[int]:
    return {protocol.local_candidate.port for protocol in connection._protocols}


async def packets_received(pc: Any) -> int:
    """SRTP and DTLS datagrams the peer connection's (bundled) DTLS transport received."""
    report = await pc.getStats()
    return sum(getattr(stats, "packetsReceived", 0) or 0 for stats in report.values()
               if getattr(stats, "type", "") == "transport")  # fmt: skip


async def _stalled(count: Any) -> None:
    """Wait until `count()` stops growing for a second (the cut path carries nothing)."""
    previous, since = await _value(count), time.monotonic()
    deadline = since + 15
    while time.monotonic() - since < 1.0:
        await asyncio.sleep(0.1)
        now = await _value(count)
        if now != previous:
            previous, since = now, time.monotonic()
        assert time.monotonic() < deadline, "media kept flowing on a cut path"


async def _restart_publish(media: MediaHarness, participant_id: str, client: MediaClient) -> bool:
    """The client's side of a publish restart: new credentials in a new offer."""
    pc = client.publish_pc
    restart = IceRestart.begin(_ice(pc))
    await restart.gather()
    await pc.setLocalDescription(await pc.createOffer())
    answer = await media.server.offer(participant_id, "publish", pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    credentials = remote_credentials(answer)
    assert credentials is not None
    return await restart.connect(*credentials)


async def _value(count: Any) -> Any:
    result = count()
    return await result if asyncio.iscoroutine(result) else result


async def pc_offer(media: MediaHarness, participant_id: str, client: MediaClient) -> None:
    """The client offers its publish session again, as it is (a renegotiation)."""
    pc = client.publish_pc
    await pc.setLocalDescription(await pc.createOffer())
    answer = await media.server.offer(participant_id, "publish", pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


def reconnecting_told(media: MediaHarness, participant_id: str) -> list[tuple[str, bool]]:
    """What the SFU tells a participant of others' media reconnecting, in order, as it tells
    it: (whose, reconnecting)."""
    told: list[tuple[str, bool]] = []
    participant = media.server.participants[participant_id]
    original = participant.notify

    def notify(event: Notification) -> None:
        if isinstance(event, MediaReconnecting):
            told.append((event.participant_id, event.reconnecting))
        original(event)

    participant.notify = notify
    return told


def answer_restarts(client: MediaClient) -> None:
    """Give the test client what a browser does: answer an offer with new ICE credentials by
    restarting its side of the subscribe session."""
    original = client.handle

    async def handle(message: dict[str, Any]) -> None:
        if message.get("type") != "offer" or message.get("pc") != "subscribe":
            await original(message)
            return
        pc = client.subscribe_pc
        restart = restart_for(_ice(pc) if pc.getTransceivers() else None, message["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        if restart is not None:
            await restart.gather()
        await pc.setLocalDescription(await pc.createAnswer())
        await client.send({"type": "answer", "pc": "subscribe", "sdp": pc.localDescription.sdp})
        if restart is not None:
            restart.start(message["sdp"])

    client.handle = handle  # type: ignore[method-assign]


async def test_publish_restart_brings_media_back_on_a_new_path(media: MediaHarness) -> None:
    a = await media.join("a", [AudioStreamTrack(), VideoStreamTrack()])
    b = await media.join("b", [])
    told_b, told_a = reconnecting_told(media, "b"), reconnecting_told(media, "a")
    await a.sync()
    await eventually(lambda: b.stats.frames("video") > 10, timeout=20)
    server_side = media.server.participants["a"].publisher
    assert server_side.pc is not None
    server_ice, client_ice = _ice(server_side.pc), _ice(a.publish_pc)
    dtls = hooks.transport_of(server_side.pc.getTransceivers()[0])
    old_ports = _local_ports(server_ice._connection)

    _cut(client_ice._connection)
    _cut(server_ice._connection)
    await _stalled(lambda: b.stats.frames("video"))
    cut_at, frames_at_cut = time.monotonic(), b.stats.frames("video")
    assert await _restart_publish(media, "a", a)
    # The others saw a's tile as reconnecting from the restart's offer until its swap.
    await eventually(lambda: told_b == [("a", True), ("a", False)], timeout=5)
    assert told_a == []  # a itself shows its own "Reconnecting…" (the page knows)
    await eventually(lambda: b.stats.frames("video") > frames_at_cut + 10, timeout=10)
    print(f"\npublish ICE restart: media back {time.monotonic() - cut_at:.2f} s after restart")

    # A new path, the same DTLS association (no new handshake), the data channels still open.
    new_ports = _local_ports(server_ice._connection)
    assert not new_ports & old_ports
    assert hooks.transport_of(server_side.pc.getTransceivers()[0]) is dtls
    # A later offer with the same credentials renegotiates; it does not restart again.
    await pc_offer(media, "a", a)
    assert pending(server_ice) is None and _local_ports(server_ice._connection) == new_ports
    assert dtls.state == "connected" and server_side.pc.connectionState == "connected"
    snapshots = len(a.received())
    a.send_json("consilium-reliable", {"type": "sync", "since": -1})
    await eventually(lambda: len(a.received()) > snapshots, timeout=10)
    assert media.server.participants.keys() == {"a", "b"}
    assert told_b == [("a", True), ("a", False)]  # the renegotiation was no restart
    assert not media.errors


async def test_subscribe_restart_brings_media_back_on_a_new_path(media: MediaHarness) -> None:
    await media.join("a", [VideoStreamTrack()])
    b = await media.join("b", [])
    told_a = reconnecting_told(media, "a")
    answer_restarts(b)
    await eventually(lambda: b.stats.frames("video") > 10, timeout=20)
    subscriber = media.server.participants["b"].subscriber
    assert subscriber.pc is not None
    server_ice, client_ice = _ice(subscriber.pc), _ice(b.subscribe_pc)
    old_ports = _local_ports(server_ice._connection)

    _cut(client_ice._connection)
    _cut(server_ice._connection)
    # Packets, not decoded frames: aiortc's own jitter buffer (512 packets) holds frames back
    # behind the ones lost on the dead path for ~15 s, where a browser asks for a keyframe.
    await _stalled(lambda: packets_received(b.subscribe_pc))
    received_at_cut, restart_at = await packets_received(b.subscribe_pc), time.monotonic()
    await media.server.restart_ice("b", "subscribe")

    async def flowing() -> bool:
        return await packets_received(b.subscribe_pc) > received_at_cut + 50

    await eventually(flowing, timeout=10)
    print(f"\nsubscribe ICE restart: media back {time.monotonic() - restart_at:.2f} s after asking")
    await eventually(lambda: told_a == [("b", True), ("b", False)], timeout=5)
    assert not _local_ports(server_ice._connection) & old_ports
    assert subscriber.pc.connectionState == "connected"
    assert not media.errors


async def test_a_restart_whose_checks_fail_keeps_the_old_path(
    media: MediaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ice_restart, "RESTART_TIMEOUT_S", 3.0)  # the SFU's side gives up sooner
    a = await media.join("a", [VideoStreamTrack()])
    b = await media.join("b", [])
    told_b = reconnecting_told(media, "b")
    await eventually(lambda: b.stats.frames("video") > 10, timeout=20)
    pc = a.publish_pc
    connection = _ice(pc)._connection
    path = connection._nominated[1]
    restart = IceRestart.begin(_ice(pc))
    await restart.gather()
    await pc.setLocalDescription(await pc.createOffer())
    answer = await media.server.offer("a", "publish", pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    credentials = remote_credentials(answer)
    assert credentials is not None
    # The wrong password: every check of the new generation is refused (401).
    assert not await restart.connect(credentials[0], "x" * 22, timeout_s=3)
    assert connection._nominated[1] is path
    # The SFU's side gives up too: a's tile is back, on the old path.
    assert told_b[:1] == [("a", True)]
    await eventually(lambda: told_b == [("a", True), ("a", False)], timeout=10)
    assert connection._query_consent_task is not None  # a dead path would still end it
    assert "add_remote_candidate" not in vars(connection)
    frames = b.stats.frames("video")
    await eventually(lambda: b.stats.frames("video") > frames + 10, timeout=10)


async def test_restarting_a_session_that_never_connected_is_refused(media: MediaHarness) -> None:
    await media.join("a", [])
    try:
        await media.server.restart_ice("a", "subscribe")
    except Exception as exc:
        assert "no subscribe session" in str(exc)
    else:
        raise AssertionError("a restart without a subscribe session was accepted")


async def test_leaving_during_a_restart_closes_its_new_sockets(media: MediaHarness) -> None:
    a = await media.join("a", [VideoStreamTrack()])
    await media.join("b", [])
    told_b = reconnecting_told(media, "b")
    await a.channels_open()
    server_side = media.server.participants["a"].publisher
    assert server_side.pc is not None
    pc = a.publish_pc
    client_restart = IceRestart.begin(_ice(pc))  # the client's side never checks: it hangs
    await client_restart.gather()
    await pc.setLocalDescription(await pc.createOffer())
    await media.server.offer("a", "publish", pc.localDescription.sdp)
    server_restart = pending(_ice(server_side.pc))
    assert server_restart is not None and server_restart.fresh._protocols
    assert told_b == [("a", True)]
    # The network changes again before that restart is done: a newer one replaces it, and
    # the others still see one reconnecting, not a flicker back and forth.
    client_restart = IceRestart.begin(_ice(pc))
    await client_restart.gather()
    await pc.setLocalDescription(await pc.createOffer())
    await media.server.offer("a", "publish", pc.localDescription.sdp)
    newer = pending(_ice(server_side.pc))
    assert newer is not None and newer is not server_restart
    await eventually(lambda: not server_restart.fresh._protocols, timeout=5)
    assert told_b == [("a", True)]
    await media.leave("a")
    await eventually(lambda: not newer.fresh._protocols, timeout=5)
    assert told_b == [("a", True), ("a", False)]  # gone, not left "reconnecting" for ever
    client_restart.abandon()


async def test_someone_joining_during_a_restart_is_told_after_their_first_offer(
    media: MediaHarness,
) -> None:
    """A late joiner's roster shows everyone as normal: the SFU tells it whose media is still
    reconnecting at its first publish offer (which a client sends only after `joined`)."""
    a = await media.join("a", [VideoStreamTrack()])
    await a.channels_open()
    pc = a.publish_pc
    client_restart = IceRestart.begin(_ice(pc))  # the client's side never checks: it hangs
    await client_restart.gather()
    await pc.setLocalDescription(await pc.createOffer())
    await media.server.offer("a", "publish", pc.localDescription.sdp)
    assert media.server.participants["a"].restarting == {"publish"}
    told: dict[str, list[tuple[str, bool]]] = {}
    original = media.server.notify

    def notify(participant_id: str, event: Notification) -> None:
        if isinstance(event, MediaReconnecting):
            told.setdefault(participant_id, []).append((event.participant_id, event.reconnecting))
        original(participant_id, event)

    media.server.notify = notify  # type: ignore[method-assign]
    await media.server.join("mdt-1", "c", frozenset())
    assert "c" not in told, "not before its joined (it has not offered yet)"
    c = MediaClient(lambda message: _offer_as(media, "c", c, message), [])
    media.clients["c"] = c
    await c.publish()
    assert told["c"] == [("a", True)], "the newcomer learns a's tile is reconnecting"
    await pc_offer(media, "c", c)  # a later offer is no news
    assert told["c"] == [("a", True)]
    await media.leave("a")
    assert told["c"] == [("a", True), ("a", False)]
    client_restart.abandon()


async def _offer_as(
    media: MediaHarness, participant_id: str, client: MediaClient, message: dict[str, Any]
) -> None:
    if message["type"] == "offer":
        sdp = await media.server.offer(participant_id, message.get("pc", "publish"), message["sdp"])
        await client.handle({"type": "answer", "pc": "publish", "sdp": sdp})
    elif message["type"] == "answer":
        await media.server.answer(participant_id, message.get("pc", "subscribe"), message["sdp"])
