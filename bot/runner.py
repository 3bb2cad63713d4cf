"""`consilium bot`: headless participants that join a room over the real signalling protocol.

A bot is what a browser is to the server: it connects `GET /ws`, joins with a token, waits in
the lobby if it must, keeps the connection alive with `ping`, publishes a camera and microphone
and receives everyone else's media through a `MediaClient`. Its media is the replayed clip of
`bot.testsource` (encoded once per process), so one machine runs dozens of bots for a load test,
as LiveKit's `lk load-test` does. At the end each bot reports what it received: frames decoded
per kind, and per subscribe track the packets received and lost and the jitter, read from
aiortc's receiver statistics (which count packets whether or not they are decoded).

Tokens. `--token` (or `CONSILIUM_TOKEN`) gives one bot its token. Otherwise the bots' tokens are
minted by the development IdP: the `sfu` package must not import `signaling`, so the command line
(the one place that knows both) passes the IdP in as `args.mint`, a callable that takes the data
folder and returns something with `DevelopmentIdP.mint`'s signature, that is
`DevelopmentIdP.load_or_create` itself:

    add_bot_parser(subparsers, mint=DevelopmentIdP.load_or_create)

This module imports only the standard library at load time: `consilium` builds every
subcommand's parser at each start, and aiortc, PyAV and aiohttp together take a third of a second
to import. They are imported inside the functions that run a bot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import ssl
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp
    from aiortc import MediaStreamTrack, RTCPeerConnection

    from bot.client import MediaClient

log = logging.getLogger("consilium.sfu.bot")

DEFAULT_SERVER = "http://127.0.0.1:8443"
DEFAULT_DATA_DIR = "./consilium-data"
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


class TokenIssuer(Protocol):
    """What a bot needs of an identity provider: `DevelopmentIdP.mint`'s signature."""

    def mint(
        self, *, sub: str, role: str, depts: Sequence[str] = (), rooms: Sequence[str] = (),
        name: str = "",
    ) -> str:  # fmt: skip
        """A signed token for these claims."""
        ...


Mint = Callable[[Path], TokenIssuer]
"""Given the server's data folder, its token issuer (`DevelopmentIdP.load_or_create`)."""


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


@dataclass(slots=True)
class TrackReport:
    """What arrived on one subscribe transceiver."""

    mid: str
    """The transceiver's media id in the subscribe session."""
    kind: str
    """`audio` or `video`."""
    participant_id: str = ""
    """Whose media it carried last (from the `tracks` message)."""
    frames_decoded: int = 0
    """Video frames or audio frames decoded (0 with `decode` off)."""
    packets_received: int = 0
    """RTP packets received (aiortc inbound-rtp `packetsReceived`)."""
    packets_lost: int = 0
    """RTP packets lost (aiortc inbound-rtp `packetsLost`; negative with duplicates)."""
    jitter_ms: float = 0.0
    """Interarrival jitter (RFC 3550), in milliseconds."""


@dataclass(slots=True)
class BotReport:
    """What one bot did and received."""

    bot: str
    """The bot's label."""
    participant_id: str = ""
    """Participant id the server gave it (empty if it never joined)."""
    joined: bool = False
    """Whether it got `joined`."""
    error: str = ""
    """Why it failed (empty when it did not)."""
    close_code: int | None = None
    """WebSocket close code, when the server closed the connection."""
    seconds_in_room: float = 0.0
    """Time from `joined` to the end of the run."""
    frames_decoded: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    """Frames decoded per kind, over all subscribe tracks."""
    packets_received: int = 0
    """RTP packets received over all subscribe tracks."""
    packets_lost: int = 0
    """RTP packets lost over all subscribe tracks."""
    ping_rtt_ms: list[float] = field(default_factory=list)
    """Round-trip time of each answered `ping`, in milliseconds."""
    tracks: list[TrackReport] = field(default_factory=list)
    """Per subscribe transceiver."""

    @property
    def ok(self) -> bool:
        """Joined and did not fail."""
        return self.joined and not self.error

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"ok": self.ok, **asdict(self)}

    def summary(self) -> str:
        """One line for a person to read."""
        if not self.ok:
            return f"{self.bot}: FAILED: {self.error}"
        rtt = f", ping {statistics.mean(self.ping_rtt_ms):.1f} ms" if self.ping_rtt_ms else ""
        jitter = max((t.jitter_ms for t in self.tracks), default=0.0)
        return (
            f"{self.bot} ({self.participant_id}): {self.seconds_in_room:.0f} s in the room, "
            f"{len(self.tracks)} tracks, {self.frames_decoded['video']} video and "
            f"{self.frames_decoded['audio']} audio frames decoded, {self.packets_received} "
            f"packets ({self.packets_lost} lost), jitter up to {jitter:.1f} ms{rtt}"
        )


def aggregate(reports: Sequence[BotReport]) -> dict[str, Any]:
    """One summary of many bots, for `--count N --json`."""
    errors: dict[str, int] = {}
    for report in reports:
        if not report.ok:
            errors[report.error] = errors.get(report.error, 0) + 1
    joined = [r for r in reports if r.joined]
    rtts = [rtt for r in reports for rtt in r.ping_rtt_ms]
    return {
        "bots": len(reports),
        "ok": sum(r.ok for r in reports),
        "failed": sum(not r.ok for r in reports),
        "errors": errors,
        "frames_decoded": {
            kind: sum(r.frames_decoded[kind] for r in reports) for kind in ("audio", "video")
        },
        "video_frames_decoded_min": min((r.frames_decoded["video"] for r in joined), default=0),
        "tracks_min": min((len(r.tracks) for r in joined), default=0),
        "packets_received": sum(r.packets_received for r in reports),
        "packets_lost": sum(r.packets_lost for r in reports),
        "jitter_ms_max": max((t.jitter_ms for r in reports for t in r.tracks), default=0.0),
        "ping_rtt_ms_mean": statistics.mean(rtts) if rtts else None,
        "ping_rtt_ms_max": max(rtts, default=None),
    }


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

    async def run(
        self, seconds: float | None = None, stop: asyncio.Event | None = None
    ) -> BotReport:
        """Join, stay until `seconds` after the start (or `stop`, or a failure), leave; report."""
        import aiohttp

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
        elif kind in ("offer", "answer", "tracks") and self.client is not None:
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
        from bot.testsource import ReplayAudioTrack, ReplayVideoTrack

        if self.settings.publish:
            self._local_tracks = [ReplayVideoTrack(), ReplayAudioTrack()]
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers
        ]
        client = MediaClient(
            self._send, self._local_tracks, ice_servers=servers, decode=self.settings.decode
        )
        for which, pc in (("publish", client.publish_pc), ("subscribe", client.subscribe_pc)):
            pc.on("connectionstatechange", self._watch(which, pc))
        return client

    def _watch(self, which: str, pc: RTCPeerConnection) -> Callable[[], None]:
        """A connection-state handler that ends the run when a media session fails."""

        def on_state() -> None:
            # A dead network can end in "closed" without "failed" (see ParticipantMedia._on_state).
            if pc.connectionState in ("failed", "closed") and not self._leaving:
                self._fail(f"the {which} media session failed (ICE or DTLS)")

        return on_state

    async def _publish(self, client: MediaClient) -> None:
        try:
            await client.publish(timeout=PUBLISH_TIMEOUT_S)
        except TimeoutError:
            self._fail(f"no answer to the publish offer within {PUBLISH_TIMEOUT_S:.0f} s")
        except BotFailure as exc:
            self._fail(str(exc))

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
                        track.packets_received = stats.packetsReceived
                        track.packets_lost = stats.packetsLost
                        track.jitter_ms = stats.jitter * 1000 / CLOCK_RATES[transceiver.kind]
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


# -- command line -------------------------------------------------------------------------------


def add_bot_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], mint: Mint | None = None
) -> argparse.ArgumentParser:
    """Add `consilium bot`; `mint` (the development IdP) lets it mint tokens for `--count`."""
    bot = subparsers.add_parser(
        "bot",
        help="run headless participants that publish test media and report what they receive",
        description="Headless participants for smoke and load tests. Each joins ROOM over the "
        "signalling protocol, publishes a replayed test pattern and tone, receives the others' "
        "media and reports frames, packets, loss and jitter at the end.",
    )
    bot.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    bot.add_argument("--room", required=True, help="room id to join")
    bot.add_argument("--token", help="token of a single bot (or CONSILIUM_TOKEN)")
    bot.add_argument("--count", type=int, default=1, help="bots to run, each with a minted token")
    bot.add_argument(
        "--data-dir", help=f"server data folder, for minting (default {DEFAULT_DATA_DIR})"
    )
    bot.add_argument(
        "--role", default="chair", help="role of minted tokens (default chair: no lobby)"
    )
    bot.add_argument(
        "--dept", action="append", help="department(s) of minted tokens (default cardiology)"
    )
    bot.add_argument("--seconds", type=float, help="how long to stay (default: until Ctrl-C)")
    bot.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay between bot starts (the server allows 60 joins/min per address)",
    )
    bot.add_argument("--no-publish", action="store_true", help="send no media")
    bot.add_argument("--no-subscribe", action="store_true", help="receive no media")
    bot.add_argument("--no-decode", action="store_true", help="count packets without decoding")
    bot.add_argument(
        "--ice-address",
        action="append",
        metavar="IP",
        help="gather ICE candidates on this address (repeat); default: 127.0.0.1 "
        "for a loopback server, else every interface",
    )
    bot.add_argument("--json", action="store_true", help="print one JSON line of statistics")
    bot.add_argument("--cacert", help="CA bundle to trust for the server's certificate")
    bot.set_defaults(func=run_bot_command, mint=mint)
    return bot


def _split(values: Sequence[str] | None) -> list[str]:
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def bot_tokens(args: argparse.Namespace) -> list[str]:
    """The token of each bot: the given one, or minted through `args.mint`."""
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    if args.token and args.count > 1:
        raise ValueError(
            "--token is one identity; --count mints a token per bot (leave --token out)"
        )
    token = args.token or (os.environ.get("CONSILIUM_TOKEN") if args.count == 1 else None)
    if token:
        return [token]
    mint: Mint | None = getattr(args, "mint", None)
    if mint is None:
        raise ValueError("give --token or set CONSILIUM_TOKEN")
    data_dir = Path(args.data_dir or os.environ.get("CONSILIUM_DATA_DIR") or DEFAULT_DATA_DIR)
    issuer = mint(data_dir)
    depts = _split(args.dept) or ["cardiology"]
    return [
        issuer.mint(sub=f"bot-{i}", role=args.role, depts=depts, rooms=[args.room], name=f"Bot {i}")
        for i in range(args.count)
    ]


def ice_addresses(server: str, given: Sequence[str] | None) -> tuple[str, ...]:
    """Where bots gather ICE candidates: as given, or loopback for a loopback server."""
    if given:
        return tuple(given)
    host = urlsplit(server).hostname or ""
    if host == "localhost":
        return ("127.0.0.1",)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return ("::1",) if ipaddress.ip_address(host).version == 6 else ("127.0.0.1",)
    return ()


async def run_bots(
    settings: Sequence[BotSettings], seconds: float | None, stagger: float = 0.0
) -> list[BotReport]:
    """Run bots concurrently until `seconds` pass or SIGINT/SIGTERM; their reports."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    deadline = None if seconds is None else loop.time() + seconds

    async def one(index: int, bot_settings: BotSettings) -> BotReport:
        if stagger and index:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), stagger * index)
        bot = Bot(bot_settings)
        if stop.is_set():
            bot.report.error = "stopped before it started"
            return bot.report
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        return await bot.run(remaining, stop)

    try:
        return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(settings))))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def run_bot_command(args: argparse.Namespace) -> int:
    """`consilium bot`: 0 when every bot joined and kept its media, 1 if one failed, 2 on usage."""
    from bot.testsource import encode_test_pattern, encode_tone
    from sfu import ice

    try:
        tokens = bot_tokens(args)
        addresses = ice_addresses(args.server, args.ice_address)
        ice_settings = ice.IceSettings(host_addresses=addresses)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    if not args.no_publish:
        # Encode the clip before the bots start, rather than in the first bot's event-loop turn.
        encode_test_pattern()
        encode_tone()
    settings = [
        BotSettings(
            room=args.room, token=token, server=args.server,
            name=f"bot-{i}" if len(tokens) > 1 else "bot",
            publish=not args.no_publish, subscribe=not args.no_subscribe,
            decode=not args.no_decode, cacert=args.cacert,
        )
        for i, token in enumerate(tokens)
    ]  # fmt: skip
    if addresses:
        ice.install(ice_settings)
    try:
        reports = asyncio.run(run_bots(settings, args.seconds, args.stagger))
    finally:
        if addresses:
            ice.uninstall()
    if args.json:
        line = reports[0].as_dict() if len(reports) == 1 else aggregate(reports)
        print(json.dumps(line), flush=True)
    else:
        for report in reports:
            print(report.summary(), flush=True)
    return 0 if all(report.ok for report in reports) else 1
