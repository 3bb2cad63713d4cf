"""A participant's side of the media sessions, on aiortc: what `consilium bot` and the tests use.

It speaks the signalling protocol's media messages as plain dicts (`offer`, `answer`,
`candidate`, `tracks`) through a `send` callable, so it runs over a real WebSocket (the bot) or
wired straight to a `MediaServer` (SFU tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceServer

from bot.frames import ReceivedFrames
from bot.simulcast import SimulcastSender, simulcast_offer
from sfu.aiortc_hooks import bypass_receiver, watch_received_rtp

log = logging.getLogger("consilium.sfu.client")

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ReceivedTrack:
    """What arrived on one subscribe transceiver."""

    kind: str
    mid: str
    frames: int = 0
    """Frames (video) or audio frames decoded."""
    width: int = 0
    samples: int = 0
    participant_id: str = ""
    received_frames: ReceivedFrames = field(default_factory=ReceivedFrames)
    """Video frames counted as their last packets arrive, decoded or not (`bot.frames`)."""


@dataclass
class ClientStats:
    """What a client received."""

    tracks: dict[str, ReceivedTrack] = field(default_factory=dict)
    data: list[dict[str, Any]] = field(default_factory=list)
    """Every data-channel message received (parsed JSON), both labels, in arrival order."""
    by_label: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The same, per data-channel label."""

    earlier: list[ReceivedTrack] = field(default_factory=list)
    """The tracks received on media sessions closed since (`MediaClient.renew`)."""

    def frames(self, kind: str) -> int:
        """Frames decoded over all tracks of a kind (on earlier sessions too)."""
        tracks = [*self.earlier, *self.tracks.values()]
        return sum(t.frames for t in tracks if t.kind == kind)


class MediaClient:
    """Publishes local tracks to the SFU and receives everyone else's."""

    def __init__(
        self,
        send: Send,
        tracks: list[MediaStreamTrack] | None = None,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        data_channels: bool = True,
        decode: bool = True,
        simulcast: SimulcastSender | None = None,
        track_factory: Callable[[], list[MediaStreamTrack]] | None = None,
    ) -> None:
        self.send = send
        self.local_tracks = tracks or []
        self.track_factory = track_factory
        """New local tracks for `renew` (aiortc stops a sender's track when its session
        closes); None: none are published again."""
        self.renewed: list[Callable[[MediaClient], None]] = []
        """Called after `renew` opened the new sessions (before offering)."""
        self.simulcast = simulcast
        """A camera sent in simulcast layers (`bot.simulcast`), offered before `tracks`."""
        self._config = RTCConfiguration(
            iceServers=ice_servers or [], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
        self.publish_pc = RTCPeerConnection(self._config)
        self.subscribe_pc = RTCPeerConnection(self._config)
        self.renewals = 0
        """Times the sessions were opened again (`renew`)."""
        self._renewal: asyncio.Future[None] | None = None
        self.decode = decode
        self.stats = ClientStats()
        self.channels: dict[str, RTCDataChannel] = {}
        self.mid_owner: dict[str, str] = {}
        self._answer: asyncio.Future[str] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self.data_channels = data_channels
        self.data_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        """Called with (label, message) for each data-channel message, as it arrives."""
        self.window_start: float | None = None
        """When the measured window began (`begin_window`): the frame counts start there."""
        self.subscribe_pc.on("track", self._on_track)

    async def publish(self, timeout: float = 10.0) -> None:
        """Offer the local tracks (and data channels) and apply the SFU's answer."""
        camera = None
        if self.simulcast is not None:
            camera = self.publish_pc.addTransceiver("video", direction="sendonly")
        for track in self.local_tracks:
            self.publish_pc.addTransceiver(track, direction="sendonly")
        # Data channels after the transceivers: aiortc (1.16) with max-bundle drops the shared
        # transport when the SCTP association was created before any transceiver.
        if self.data_channels:
            self.channels["consilium-reliable"] = self.publish_pc.createDataChannel(
                "consilium-reliable"
            )
            self.channels["consilium-lossy"] = self.publish_pc.createDataChannel(
                "consilium-lossy", ordered=False, maxRetransmits=0
            )
            for label, channel in self.channels.items():
                channel.on("message", functools.partial(self._on_data, label))
        offer = await self.publish_pc.createOffer()
        await self.publish_pc.setLocalDescription(offer)
        self._answer = asyncio.get_running_loop().create_future()
        offered = self.publish_pc.localDescription.sdp
        if self.simulcast is not None:
            offered = simulcast_offer(offered)
        await self.send({"type": "offer", "pc": "publish", "sdp": offered})
        sdp = await asyncio.wait_for(self._answer, timeout)
        await self.publish_pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        if self.simulcast is not None and camera is not None:
            self.simulcast.start(camera, sdp)

    async def renew(self, timeout: float = 10.0) -> None:
        """Close both media sessions and open new ones (`media_moved`: the room's media now
        lives on another node): new tracks from `track_factory`, the simulcast camera and the
        data channels, offered again. What was received so far stays counted
        (`ClientStats.earlier`)."""
        for task in self._consumers:
            task.cancel()
        self._consumers = []
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()  # an offer to the old node: its answer will not come
        if self.simulcast is not None:
            await self.simulcast.close()
        old = (self.publish_pc, self.subscribe_pc)
        self.stats.earlier.extend(self.stats.tracks.values())
        self.stats.tracks = {}
        self.channels = {}
        self.mid_owner = {}
        self.publish_pc = RTCPeerConnection(self._config)
        self.subscribe_pc = RTCPeerConnection(self._config)
        self.subscribe_pc.on("track", self._on_track)
        self.local_tracks = self.track_factory() if self.track_factory is not None else []
        self.renewals += 1
        for listener in self.renewed:
            listener(self)
        for pc in old:
            await pc.close()
        await self.publish(timeout)

    async def handle(self, message: dict[str, Any]) -> None:
        """A media message from the server (`media_moved`, and `resumed` on another node after
        one's node was lost: `renew`, without waiting)."""
        kind = message.get("type")
        if kind == "media_moved" or (kind == "resumed" and message.get("replayed") is False):
            # In the background: the new publish answer comes through this same handler.
            self._renewal = asyncio.ensure_future(self.renew())
            self._renewal.add_done_callback(_log_failure)
        elif kind == "answer" and message.get("pc", "publish") == "publish":
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(message["sdp"])
        elif kind == "offer" and message.get("pc", "publish") == "subscribe":
            await self.subscribe_pc.setRemoteDescription(
                RTCSessionDescription(sdp=message["sdp"], type="offer")
            )
            answer = await self.subscribe_pc.createAnswer()
            await self.subscribe_pc.setLocalDescription(answer)
            await self.send(
                {"type": "answer", "pc": "subscribe", "sdp": self.subscribe_pc.localDescription.sdp}
            )
        elif kind == "tracks":
            self.mid_owner = {t["mid"]: t["participant_id"] for t in message["tracks"]}
            for mid, received in self.stats.tracks.items():
                received.participant_id = self.mid_owner.get(mid, "")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if not self.decode:
            # Not reading the track is not enough: aiortc's receiver would still decode every
            # frame in its thread and queue it. Started without that thread, the receiver still
            # counts packets (getStats), sends reports and asks for retransmissions.
            for candidate in self.subscribe_pc.getTransceivers():
                if not candidate.receiver._RTCRtpReceiver__started:  # type: ignore[attr-defined]
                    bypass_receiver(candidate.receiver, lambda _params: None)
        transceiver = next(
            (t for t in self.subscribe_pc.getTransceivers() if t.receiver.track is track), None
        )
        mid = transceiver.mid if transceiver is not None and transceiver.mid else str(id(track))
        received = ReceivedTrack(kind=track.kind, mid=mid,
                                 participant_id=self.mid_owner.get(mid, ""))  # fmt: skip
        self.stats.tracks[mid] = received
        if track.kind == "video" and transceiver is not None:
            if self.window_start is not None:
                received.received_frames.begin(time.monotonic())
            frames = received.received_frames
            watch_received_rtp(
                transceiver.receiver,
                lambda packet, now: frames.on_packet(packet.marker, packet.timestamp, now),
            )
        if self.decode:
            self._consumers.append(asyncio.ensure_future(self._consume(track, received)))

    def begin_window(self, now: float) -> None:
        """Start counting received video frames (and freezes) from `now`, for every track now
        and later."""
        self.window_start = now
        for received in self.stats.tracks.values():
            if received.kind == "video":
                received.received_frames.begin(now)

    async def _consume(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                received.frames += 1
                width = getattr(frame, "width", 0)
                if width:
                    received.width = width
                received.samples += getattr(frame, "samples", 0)

    def _on_data(self, label: str, message: str | bytes) -> None:
        if isinstance(message, str):
            with contextlib.suppress(ValueError):
                parsed = json.loads(message)
                self.stats.data.append(parsed)
                self.stats.by_label.setdefault(label, []).append(parsed)
                for listener in self.data_listeners:
                    listener(label, parsed)

    def send_data(self, label: str, text: str) -> None:
        """Send a message on a data channel (to the SFU: annotations, chat, pointer)."""
        self.channels[label].send(text)

    def send_json(self, label: str, message: dict[str, Any]) -> None:
        """Send one JSON object on a data channel."""
        self.send_data(label, json.dumps(message, separators=(",", ":")))

    def received(self, label: str = "consilium-reliable") -> list[dict[str, Any]]:
        """The messages received on one data channel, in arrival order."""
        return self.stats.by_label.get(label, [])

    async def channels_open(self, timeout: float = 10.0) -> None:
        """Wait until every data channel is open (made, too: while `renew` reopens the
        sessions there are none for a moment)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (
            (self.channels or not self.data_channels)
            and all(c.readyState == "open" for c in self.channels.values())
        ):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("data channels did not open")
            await asyncio.sleep(0.02)

    async def sync(self, timeout: float = 10.0) -> None:
        """Open the data channels and ask for the annotation snapshot (`sync`)."""
        await self.channels_open(timeout)
        self.send_json("consilium-reliable", {"type": "sync", "since": -1})

    async def close(self) -> None:
        """Close both sessions."""
        if self._renewal is not None:
            self._renewal.cancel()
        for task in self._consumers:
            task.cancel()
        if self.simulcast is not None:
            await self.simulcast.close()
        for pc in (self.publish_pc, self.subscribe_pc):
            await pc.close()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("opening the media sessions again failed: %r", task.exception())
