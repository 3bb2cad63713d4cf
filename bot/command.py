"""`consilium bot`'s command line: its parser, each bot's token, where bots gather ICE, running
many bots at once and printing their reports.

Tokens. `--token` (or `CONSILIUM_TOKEN`) gives one bot its token. Otherwise the bots' tokens are
minted by the development IdP: the `bot` package must not import `signaling`, so the command line
(the one place that knows both) passes the IdP in as `args.mint`, a callable that takes the data
folder and returns something with `DevelopmentIdP.mint`'s signature, that is
`DevelopmentIdP.load_or_create` itself:

    add_bot_parser(subparsers, mint=DevelopmentIdP.load_or_create)

Like `bot.runner`, this module imports only the standard library (and those two modules) at load
time: aiortc and the test source are imported when a bot runs.
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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from bot.report import BotReport, aggregate
from bot.runner import DEFAULT_SERVER, Bot, BotSettings

log = logging.getLogger("consilium.sfu.bot")

DEFAULT_DATA_DIR = "./consilium-data"


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
    bot.add_argument(
        "--prefix",
        default="bot",
        help="subject and label prefix of minted bots (default bot: bot-0, bot-1...); give each "
        "process its own when several join one room",
    )
    bot.add_argument(
        "--video-size",
        type=_video_size,
        default=(640, 480),
        metavar="WxH",
        help="size of the published test pattern (default 640x480)",
    )
    bot.add_argument(
        "--video-bitrate",
        type=int,
        default=1_000_000,
        metavar="BPS",
        help="bitrate of the published test pattern, bits per second (default 1000000)",
    )
    bot.add_argument(
        "--simulcast",
        action="store_true",
        help="publish the camera in three simulcast layers (a quarter, half and full size; "
        "--video-bitrate is the full layer's) with keyframes only when the SFU asks, as a "
        "browser does",
    )
    bot.add_argument(
        "--measure-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start the measured window this long after the start (joins and first keyframes "
        "left out): received packets, loss, frames and freezes cover the window only; SIGUSR1 "
        "starts it afresh at any time",
    )
    bot.add_argument("--json", action="store_true", help="print one JSON line of statistics")
    bot.add_argument("--cacert", help="CA bundle to trust for the server's certificate")
    bot.set_defaults(func=run_bot_command, mint=mint)
    return bot


def _video_size(text: str) -> tuple[int, int]:
    """`WxH` as (width, height): positive even numbers (VP8 in 4:2:0)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 320x240") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: use positive even numbers")
    return width, height


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
    prefix = getattr(args, "prefix", "bot")
    return [
        issuer.mint(sub=f"{prefix}-{i}", role=args.role, depts=depts, rooms=[args.room],
                    name=f"{prefix.title()} {i}")
        for i in range(args.count)
    ]  # fmt: skip


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
    """Run bots concurrently until `seconds` pass or SIGINT/SIGTERM; their reports. SIGUSR1
    starts every bot's measured window afresh (a benchmark aligns its window with them)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    bots: list[Bot] = []

    def begin_windows() -> None:
        for bot in bots:
            bot.begin_window()

    handlers: dict[int, Callable[[], None]] = {
        signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGUSR1: begin_windows,
    }  # fmt: skip
    for signum, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler)
    deadline = None if seconds is None else loop.time() + seconds

    async def one(index: int, bot_settings: BotSettings) -> BotReport:
        if stagger and index:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), stagger * index)
        bot = Bot(bot_settings)
        bots.append(bot)
        if stop.is_set():
            bot.report.error = "stopped before it started"
            return bot.report
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        return await bot.run(remaining, stop)

    try:
        return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(settings))))
    finally:
        for signum in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def run_bot_command(args: argparse.Namespace) -> int:
    """`consilium bot`: 0 when every bot joined and kept its media, 1 if one failed, 2 on usage."""
    from bot.simulcast import encode_layers
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
        if args.video_bitrate <= 0:
            print("error: --video-bitrate must be positive", file=sys.stderr)
            return 2
        width, height = args.video_size
        if args.simulcast:
            encode_layers(width, height, args.video_bitrate)
        else:
            encode_test_pattern(width, height, bitrate=args.video_bitrate)
        encode_tone()
    settings = [
        BotSettings(
            room=args.room, token=token, server=args.server,
            name=f"{args.prefix}-{i}" if len(tokens) > 1 else args.prefix,
            publish=not args.no_publish, subscribe=not args.no_subscribe,
            decode=not args.no_decode, cacert=args.cacert, video_size=args.video_size,
            video_bitrate=args.video_bitrate, measure_after=max(0.0, args.measure_after),
            simulcast=args.simulcast,
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
