"""One headless participant that joins a room over the real signalling protocol (`consilium bot`).

A bot is what a browser is to the server: it connects `GET /ws`, joins with a token, waits in
the lobby if it must, keeps the connection alive with `ping`, publishes a camera and microphone
and receives everyone else's media through a `MediaClient`. Its media is the replayed clip of
`bot.testsource` (encoded once per process), so one machine runs dozens of bots for a load test,
as LiveKit's `lk load-test` does. At the end each bot reports what it received (`bot.report`):
frames decoded per kind, and per subscribe track the packets received and lost and the jitter,
read from aiortc's receiver statistics (which count packets whether or not they are decoded).

This module imports only the standard library at load time: `consilium` builds every
subcommand's parser at each start (`bot.command` imports this), and aiortc, PyAV and aiohttp
together take a third of a second to import. They are imported inside the functions that run a
bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.report import BotReport, TrackReport

if TYPE_CHECKING:
    import aiohttp
    from aiortc import MediaStreamTrack, RTCPeerConnection

    from bot.client import MediaClient

log = logging.getLogger("consilium.sfu.bot")

DEFAULT_SERVER = "http://127.0.0.1:8443"
PING_INTERVAL_S = 15.0
"""How often a bot pings: the protocol asks for one every 15 s."""
PUBLISH_TIMEOUT_S = 10.0
"""How long a bot waits for the SFU's answer to its publish offer."""
LEAVE_TIMEOUT_S = 2.0
"""How long a bot waits for the server to close after `leave`."""
STATS_INTERVAL_S = 2.0
"""How often receiver statistics are sampled (the last sample survives a failed session)."""
MEDIA_REQUESTS = frozenset({"offer", "answer", "candidate"})
"""Requests whose refusal (an `error` naming them) leaves a bot without media: fatal for it."""
CLOCK_RATES = {"audio": 48000, "video": 90000}
"""RTP clock rate per kind (Opus, VP8): aiortc reports jitter in RTP timestamp units."""


@dataclass(frozen=True, slots=True)
class BotSettings:
    """What one bot does."""

    room: str
    """Room id to join."""
    token: str
    """Signed token presented in `join`."""
    server: str = DEFAULT_SERVER
    """Base URL of the server; the bot connects `<server>/ws`."""
    name: str = "bot"
    """Label of this bot in reports."""
    publish: bool = True
    """Publish the replayed camera and microphone."""
    subscribe: bool = True
    """Answer the SFU's subscribe offers (receive the others' media)."""
    decode: bool = True
    """Decode received media; without, packets are only counted (cheaper, for load tests)."""
    cacert: str | None = None
    """CA bundle to trust for an https server's certificate."""
    video_size: tuple[int, int] = (640, 480)
    """Width and height of the published test pattern."""
    video_bitrate: int = 1_000_000
    """Bitrate the test pattern is encoded at, in bits per second (the full layer's with
    `simulcast`)."""
    simulcast: bool = False
    """Publish the camera in three simulcast layers as a browser does (`bot.simulcast`):
    keyframes only when the SFU asks."""
    measure_after: float = 0.0
    """Seconds after the start at which the measured window begins (the joins and the first
    keyframes left out); the received figures of the report cover the window only. 0: from
    the join on."""


class BotFailure(Exception):
    """Something that ends a bot's run (refused, closed, no media); its message is reported."""


class Bot:
    """One headless participant: signalling over a WebSocket, media through a `MediaClient`."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        self.report = BotReport(bot=settings.name)
        """Filled in as the bot runs; complete when `run` returns."""
        self.client: MediaClient | None = None
        """The media sessions, from `joined` on."""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._done: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._local_tracks: list[MediaStreamTrack] = []
        self._joined_at: float | None = None
        self._pings: dict[int, float] = {}
        self._leaving = False
        self._started = time.monotonic()
        """When the run began (the measured window starts `measure_after` seconds later)."""
        self._window_start: float | None = None
        """When the measured window began (monotonic clock)."""
        self._at_window_start: dict[str, tuple[int, int]] = {}
        """Per subscribe mid: (packets received, packets lost) when the window began."""

    async def run(
        self, seconds: float | None = None, stop: asyncio.Event | None = None
    ) -> BotReport:
        """Join, stay until `seconds` after the start (or `stop`, or a failure), leave; report."""
        import aiohttp

        self._started = time.monotonic()
        done = self._done = asyncio.Event()
        if stop is not None:
            self._spawn(self._relay(stop, done))
        url = self.settings.server.rstrip("/") + "/ws"
        tls: ssl.SSLContext | bool = True
        if self.settings.cacert:
            tls = ssl.create_default_context(cafile=self.settings.cacert)
        try:
            async with aiohttp.ClientSession() as session:
                try:
                    self._ws = await session.ws_connect(url, ssl=tls, autoping=True)
                except aiohttp.WSServerHandshakeError as exc:
                    raise BotFailure(
                        f"WebSocket refused: HTTP {exc.status} {exc.message}"
                    ) from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise BotFailure(f"cannot connect to {url}: {exc}") from None
                await self._send({"type": "join", "token": self.settings.token,
                                  "room": self.settings.room})  # fmt: skip
                reader = self._spawn(self._read())
                self._spawn(self._sample_stats())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), seconds)
                if not self.report.joined:
                    self._fail("not admitted to the room before the end of the run")
                await self._leave(reader)
        except BotFailure as exc:
            self._fail(str(exc))
        finally:
            await self._close()
        return self.report

    # -- signalling --------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.append(task)
        return task

    @staticmethod
    async def _relay(stop: asyncio.Event, done: asyncio.Event) -> None:
        await stop.wait()
        done.set()

    async def _send(self, message: dict[str, Any]) -> None:
        """Write one protocol message (the `send` of the `MediaClient` too)."""
        if self._ws is None or self._ws.closed:
            raise BotFailure("the WebSocket is closed")
        await self._ws.send_str(json.dumps(message))

    def _fail(self, error: str) -> None:
        """End the run with this error (the first one reported wins)."""
        if not self.report.error:
            self.report.error = error
            log.warning("%s: %s", self.settings.name, error)
        if self._done is not None:
            self._done.set()

    async def _read(self) -> None:
        import aiohttp

        ws = self._ws
        assert ws is not None
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                # Handled one at a time, in order: a subscribe offer is answered before the next
                # one is applied, as the SFU expects.
                try:
                    await self._dispatch(json.loads(message.data))
                except BotFailure as exc:
                    self._fail(str(exc))
                except Exception as exc:
                    log.exception("%s: cannot handle a message", self.settings.name)
                    self._fail(f"cannot handle {str(message.data)[:40]!r}: {exc!r}")
                continue
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED):  # fmt: skip
                self.report.close_code = ws.close_code
                if not self._leaving:
                    reason = message.extra if isinstance(message.extra, str) else ""
                    self._fail(f"closed by the server: {ws.close_code} {reason}".rstrip())
            elif message.type == aiohttp.WSMsgType.ERROR:
                self._fail(f"WebSocket error: {ws.exception()}")
            else:
                continue
            if self._done is not None:
                self._done.set()
            return

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "joined":
            await self._on_joined(message)
        elif kind == "lobby":
            log.info("%s: waiting in the lobby (%s)", self.settings.name, message.get("reason"))
        elif kind == "pong":
            sent = self._pings.pop(message.get("id") or -1, None)
            if sent is not None:
                self.report.ping_rtt_ms.append((time.monotonic() - sent) * 1000)
        elif kind == "error":
            text = f"{message.get('code')}: {message.get('message')}"
            if message.get("request") in MEDIA_REQUESTS:
                raise BotFailure(f"media refused ({text})")
            log.warning("%s: server error %s", self.settings.name, text)
        elif kind in ("offer", "answer", "tracks", "media_moved") and self.client is not None:
            if kind == "offer" and not self.settings.subscribe:
                # Leaving the subscribe offer unanswered is how a bot declines others' media:
                # the SFU's subscribe session never connects, so nothing is sent to it.
                return
            await self.client.handle(message)

    async def _on_joined(self, message: dict[str, Any]) -> None:
        if self.report.joined:
            return
        self.report.joined = True
        self.report.participant_id = str(message.get("participant_id", ""))
        self._joined_at = time.monotonic()
        log.info("%s: joined as %s", self.settings.name, self.report.participant_id)
        self._spawn(self._ping_forever())
        self.client = self._media_client(message.get("ice_servers") or [])
        delay = self._started + self.settings.measure_after - time.monotonic()
        self._spawn(self._begin_window(self.client, max(0.0, delay)))
        if self.settings.publish:
            self._spawn(self._publish(self.client))

    async def _ping_forever(self) -> None:
        number = 0
        while True:
            number += 1
            self._pings[number] = time.monotonic()
            try:
                await self._send({"type": "ping", "id": number})
            except (BotFailure, ConnectionError):
                return
            await asyncio.sleep(PING_INTERVAL_S)

    async def _leave(self, reader: asyncio.Task[None]) -> None:
        await self._sample()
        self._leaving = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(BotFailure, ConnectionError):
                await self._send({"type": "leave"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), LEAVE_TIMEOUT_S)
            await self._ws.close()

    async def _close(self) -> None:
        if self._joined_at is not None:
            self.report.seconds_in_room = time.monotonic() - self._joined_at
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for track in self._local_tracks:
            track.stop()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    # -- media -------------------------------------------------------------------------------

    def _media_client(self, ice_servers: list[dict[str, Any]]) -> MediaClient:
        from aiortc import RTCIceServer

        from bot.client import MediaClient
        from bot.simulcast import SimulcastSender, encode_layers
        from bot.testsource import ReplayAudioTrack, ReplayVideoTrack, encode_test_pattern

        simulcast = clip = None
        width, height = self.settings.video_size
        if self.settings.publish and self.settings.simulcast:
            simulcast = SimulcastSender(encode_layers(width, height, self.settings.video_bitrate))
        elif self.settings.publish:
            clip = encode_test_pattern(width, height, bitrate=self.settings.video_bitrate)

        def tracks() -> list[MediaStreamTrack]:
            """What each new publish session sends (the simulcast layers go beside it)."""
            if clip is not None:
                return [ReplayVideoTrack(clip), ReplayAudioTrack()]
            return [ReplayAudioTrack()] if simulcast is not None else []

        if self.settings.publish:
            self._local_tracks = tracks()
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers
        ]
        client = MediaClient(
            self._send,
            self._local_tracks,
            ice_servers=servers,
            decode=self.settings.decode,
            simulcast=simulcast,
            track_factory=tracks,
        )
        client.renewed.append(self._watch_sessions)
        self._watch_sessions(client)
        return client

    def _watch_sessions(self, client: MediaClient) -> None:
        """Watch the client's media sessions (again after `media_moved` opened new ones)."""
        for which, pc in (("publish", client.publish_pc), ("subscribe", client.subscribe_pc)):
            pc.on("connectionstatechange", self._watch(which, pc, client))

    def _watch(self, which: str, pc: RTCPeerConnection, client: MediaClient) -> Callable[[], None]:
        """A connection-state handler that ends the run when a media session fails (not one
        closed because the room's media moved and a new one replaced it)."""

        def on_state() -> None:
            # A dead network can end in "closed" without "failed" (see ParticipantMedia._on_state).
            current = pc in (client.publish_pc, client.subscribe_pc)
            if pc.connectionState in ("failed", "closed") and current and not self._leaving:
                self._fail(f"the {which} media session failed (ICE or DTLS)")

        return on_state

    async def _publish(self, client: MediaClient) -> None:
        try:
            await client.publish(timeout=PUBLISH_TIMEOUT_S)
        except TimeoutError:
            self._fail(f"no answer to the publish offer within {PUBLISH_TIMEOUT_S:.0f} s")
        except BotFailure as exc:
            self._fail(str(exc))

    def begin_window(self) -> None:
        """Start the measured window afresh, now (SIGUSR1 to `consilium bot`)."""
        if self.client is not None and self._done is not None and not self._done.is_set():
            self._spawn(self._begin_window(self.client, 0.0))

    async def _begin_window(self, client: MediaClient, delay: float) -> None:
        """Start the measured window `delay` seconds from now."""
        await asyncio.sleep(delay)
        now = time.monotonic()
        self._window_start = now
        client.begin_window(now)
        self._at_window_start = {
            mid: (received, lost) for mid, received, lost in await self._packet_counts()
        }

    async def _packet_counts(self) -> list[tuple[str, int, int]]:
        """(mid, packets received, packets lost) of each subscribe receiver, from aiortc's
        inbound-rtp statistics."""
        counts = []
        if self.client is not None:
            for transceiver in self.client.subscribe_pc.getTransceivers():
                with contextlib.suppress(Exception):  # a receiver without a transport yet
                    for stats in (await transceiver.receiver.getStats()).values():
                        if stats.type == "inbound-rtp":
                            counts.append(
                                (transceiver.mid or "", stats.packetsReceived, stats.packetsLost)
                            )
        return counts

    async def _sample_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            await self._sample()

    async def _sample(self) -> None:
        """Read every subscribe receiver's statistics into the report."""
        client = self.client
        if client is None:
            return
        tracks: list[TrackReport] = []
        now = time.monotonic()
        for transceiver in client.subscribe_pc.getTransceivers():
            mid = transceiver.mid or ""
            received = client.stats.tracks.get(mid)
            track = TrackReport(
                mid=mid,
                kind=transceiver.kind,
                participant_id=client.mid_owner.get(mid, ""),
                frames_decoded=received.frames if received is not None else 0,
            )
            with contextlib.suppress(Exception):  # a receiver without a transport yet
                for stats in (await transceiver.receiver.getStats()).values():
                    if stats.type == "inbound-rtp":
                        # Counted from the window's start (from the join without a window).
                        base_received, base_lost = self._at_window_start.get(mid, (0, 0))
                        track.packets_received = stats.packetsReceived - base_received
                        track.packets_lost = stats.packetsLost - base_lost
                        track.jitter_ms = stats.jitter * 1000 / CLOCK_RATES[transceiver.kind]
            if received is not None and transceiver.kind == "video":
                figures = received.received_frames.figures(now)
                track.frames_received = figures.frames
                track.freezes = figures.freezes
                track.frozen_s = round(figures.frozen_s, 3)
                track.fps = round(figures.fps, 2)
            tracks.append(track)
        if not tracks and self.report.tracks:
            return  # the session is gone: keep the last sample
        report = self.report
        report.tracks = tracks
        report.frames_decoded = {
            kind: sum(t.frames_decoded for t in tracks if t.kind == kind)
            for kind in ("audio", "video")
        }
        report.packets_received = sum(t.packets_received for t in tracks)
        report.packets_lost = sum(t.packets_lost for t in tracks)
        if self._window_start is not None:
            report.window_s = round(now - self._window_start, 3)
