"""Signalling benchmark: join latency, join throughput and memory per idle participant.

Starts a real `consilium serve` process and drives it over WebSockets from this process, then
prints one JSON line. The keys `joins_per_s`, `join_latency_p95_ms`, `idle_participants` and
`kib_per_participant` are a contract other tools read; the rest are extras for a human.

    python bench/signaling.py                  # 2,000 participants, 100 joins/s for 5 s
    python bench/signaling.py --quick          # CI smoke: 200 participants, 2 s

Phase 1 opens joins at a fixed rate (open loop: a join starts on schedule whether or not the
previous one finished) and measures connect + `join` -> `joined`. Phase 2 fills the server up to
`--participants` joined, idle participants as fast as it can, with a bounded number in flight,
and reads the server's resident memory before and after. Every participant is a chair granted
its room, so it goes straight in without a lobby; rooms hold `--per-room` participants.

The same two phases, with the same client code, participant count and rate, are then run against
a baseline: a bare aiohttp WebSocket server (an inline script in its own process) that answers the
first text message with one text message and then only reads. That is the floor any aiohttp-based
signalling server pays; `baseline_kib_per_participant`, `baseline_join_latency_p95_ms` and
`overhead_kib_per_participant` (ours minus the baseline) put our numbers next to it. The two
servers run one after the other, never at once. `--no-baseline` skips it (those keys are null).

It measures; it does not judge. The aims (2,000 idle participants on one process under 50 KiB
each, p95 join latency under 50 ms at 100 joins/s) are for the reader to compare against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from process import ServerProcess, free_port, percentile_ms

if TYPE_CHECKING:
    from signaling.devidp import DevelopmentIdP

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# This file shares its name with the package it measures: run as `python bench/signaling.py`,
# its own folder comes first on sys.path and `import signaling` would find this file. (`process`,
# from that folder, is imported above, before it goes.)
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

JOIN_TIMEOUT_S = 30.0
"""How long one join may take before it counts as failed."""

BASELINE_KEYS = (
    "baseline_kib_per_participant",
    "baseline_join_latency_p95_ms",
    "overhead_kib_per_participant",
)
"""Keys always in the line; null under `--no-baseline`."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run does."""

    participants: int = 2000
    """Idle participants joined at the end (phase 1 and phase 2 together)."""
    rate: float = 100.0
    """Joins per second in the latency phase."""
    latency_seconds: float = 5.0
    """Length of the latency phase."""
    per_room: int = 10
    """Participants per room."""
    concurrency: int = 50
    """Joins in flight at once in the capacity phase."""
    settle_seconds: float = 2.0
    """Wait after the last join before reading the server's memory."""
    baseline: bool = True
    """Also measure the bare aiohttp baseline server."""


@dataclass
class Participant:
    """One joined client: its socket and the task that reads (and discards) what it is sent."""

    ws: aiohttp.ClientWebSocketResponse
    reader: asyncio.Task[None]

    @property
    def open(self) -> bool:
        """True while the server has not closed it."""
        return not self.ws.closed and not self.reader.done()


@dataclass
class Crowd:
    """Every participant the bench holds, and what went wrong on the way."""

    participants: list[Participant] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


class JoinFailed(Exception):
    """The server answered a join with something other than `joined`."""


@dataclass
class Measurement:
    """What both phases measured against one server; `crowd` is still joined."""

    latencies: list[float]
    """Connect + first answer, in seconds, of the latency phase's successful joins."""
    joined: int
    """Joins that succeeded in the capacity phase."""
    seconds: float
    """Length of the capacity phase."""
    idle: int
    """Participants still open after the settle wait."""
    rss_before: int
    """Server VmRSS (KiB) after the warm-up, before the first measured join."""
    rss_after: int
    """Server VmRSS (KiB) after the settle wait."""
    crowd: Crowd

    @property
    def kib_per_participant(self) -> float:
        """Server memory growth per idle participant."""
        return round((self.rss_after - self.rss_before) / max(self.idle, 1), 2)

    @property
    def joins_per_s(self) -> float | None:
        """Capacity-phase throughput."""
        return round(self.joined / self.seconds, 1) if self.seconds > 0 else None


# -- the server ------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (the server inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ServeProcess(ServerProcess):
    """A `consilium serve` subprocess with bounds opened wide enough for the run."""

    name = "consilium serve"

    def __init__(self, data_dir: Path, config: BenchConfig) -> None:
        self.data_dir = data_dir
        port = free_port()
        rooms = -(-config.participants // config.per_room)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
        env.update(
            {
                "CONSILIUM_JOIN_ATTEMPTS_PER_IP_PER_MIN": "1000000",
                "CONSILIUM_MAX_PENDING_CONNECTIONS": "1000000",
                "CONSILIUM_MAX_ROOMS_PER_NODE": str(rooms + 16),
                "CONSILIUM_MAX_PARTICIPANTS_PER_ROOM": str(max(config.per_room, 24)),
                "CONSILIUM_LOG_LEVEL": "warning",
                # Idle participants send nothing, pings included: keep them for the whole run.
                "CONSILIUM_KEEPALIVE_TIMEOUT_S": "3600",
                "CONSILIUM_JOIN_TIMEOUT_S": str(JOIN_TIMEOUT_S),
            }
        )
        super().__init__(
            [sys.executable, "-m", "consilium.cli", "serve", "--port", str(port),
             "--data-dir", str(data_dir)],
            env, REPO, data_dir.parent / "serve.log", port,
        )  # fmt: skip


BASELINE_SERVER = """
import sys
from aiohttp import WSMsgType, web

async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type is WSMsgType.TEXT:
            await sock.send_str('{"type": "joined"}')
            break
    async for msg in sock:
        pass
    return sock

async def healthz(request):
    return web.Response(text="ok")

app = web.Application()
app.add_routes([web.get("/ws", ws), web.get("/healthz", healthz)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            shutdown_timeout=5.0)
"""
"""The baseline: a bare aiohttp WebSocket server. It answers the first text message with one
text message (`joined`, so the bench's own join code reads it as a successful join) and then
only reads until the client leaves. `/healthz` is there only for `wait_ready`."""


class BaselineProcess(ServerProcess):
    """The bare aiohttp baseline server (`BASELINE_SERVER`), run with `python -c`."""

    name = "baseline aiohttp server"

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        # cwd is an empty folder: `python -c` puts it first on sys.path.
        cwd = workdir / "baseline"
        cwd.mkdir(exist_ok=True)
        super().__init__(
            [sys.executable, "-c", BASELINE_SERVER, str(port)],
            dict(os.environ), cwd, workdir / "baseline.log", port,
        )  # fmt: skip


# -- the clients -----------------------------------------------------------------------------


def room_of(index: int, config: BenchConfig) -> str:
    """The room of the `index`-th participant."""
    return f"bench-{index // config.per_room}"


def mint(idp: DevelopmentIdP, index: int, room: str) -> str:
    """A chair token for participant `index`, granting `room`."""
    return idp.mint(
        sub=f"bench-{index}", role="chair", depts=["cardiology"], rooms=[room], ttl_s=3600
    )


async def _discard(ws: aiohttp.ClientWebSocketResponse) -> None:
    # Keep reading so the server's outbound queue for this client stays empty
    # (participant_joined broadcasts); the loop ends when the server closes.
    async for _ in ws:
        pass


async def join(
    session: aiohttp.ClientSession, ws_url: str, token: str, room: str
) -> tuple[Participant, float]:
    """Connect, send `join`, wait for `joined`; the participant and the seconds it took."""
    start = time.perf_counter()
    ws = await session.ws_connect(ws_url, autoping=True, max_msg_size=0)
    try:
        await ws.send_str(json.dumps({"type": "join", "token": token, "room": room}))
        msg = await ws.receive(timeout=JOIN_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise JoinFailed(f"closed_{ws.close_code}")
        kind = json.loads(msg.data).get("type")
        if kind != "joined":
            raise JoinFailed(f"answer_{kind}")
    except BaseException:
        await ws.close()
        raise
    return Participant(ws, asyncio.create_task(_discard(ws))), elapsed


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, JoinFailed):
        return str(exc)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"http_{exc.status}"
    return type(exc).__name__


async def join_recorded(
    session: aiohttp.ClientSession, ws_url: str, token: str, room: str, crowd: Crowd
) -> float | None:
    """Join and add the participant to `crowd`; the latency, or None on failure."""
    try:
        participant, elapsed = await join(session, ws_url, token, room)
    except (OSError, TimeoutError, aiohttp.ClientError, JoinFailed) as exc:
        crowd.failures[_failure_reason(exc)] += 1
        return None
    crowd.participants.append(participant)
    return elapsed


async def latency_phase(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    tokens: list[tuple[str, str]],
    rate: float,
    crowd: Crowd,
) -> list[float]:
    """Start one join every 1/rate seconds (open loop); the latencies of those that joined."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[float | None]] = []
    for i, (token, room) in enumerate(tokens):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(join_recorded(session, server.ws_url, token, room, crowd)))
    results = await asyncio.gather(*tasks)
    return [r for r in results if r is not None]


async def capacity_phase(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    tokens: list[tuple[str, str]],
    concurrency: int,
    crowd: Crowd,
) -> tuple[int, float]:
    """Join all `tokens` as fast as `concurrency` joins in flight allow; (joined, seconds)."""
    pending: Iterator[tuple[str, str]] = iter(tokens)
    joined = 0

    async def worker() -> None:
        nonlocal joined
        for token, room in pending:
            if await join_recorded(session, server.ws_url, token, room, crowd) is not None:
                joined += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return joined, time.perf_counter() - start


def warm_up_tokens(idp: DevelopmentIdP, per_room: int) -> list[tuple[str, str]]:
    """Tokens that fill one warm-up room."""
    room = "bench-warm-up"
    return [
        (idp.mint(sub=f"warm-{i}", role="chair", depts=["cardiology"], rooms=[room]), room)
        for i in range(per_room)
    ]


async def warm_up(
    session: aiohttp.ClientSession, server: ServerProcess, tokens: list[tuple[str, str]]
) -> None:
    """Join and leave one room, so lazy imports and first-use caches are not counted."""
    crowd = Crowd()
    for token, room in tokens:
        await join_recorded(session, server.ws_url, token, room, crowd)
    await close_all(crowd)
    await asyncio.sleep(0.5)


async def close_all(crowd: Crowd) -> None:
    """Close every participant's socket and stop its reader."""
    await asyncio.gather(*(p.ws.close() for p in crowd.participants), return_exceptions=True)
    for p in crowd.participants:
        p.reader.cancel()
    await asyncio.gather(*(p.reader for p in crowd.participants), return_exceptions=True)


async def room_counts(
    session: aiohttp.ClientSession, server: ServeProcess, idp: DevelopmentIdP, rooms: list[str]
) -> dict[str, int]:
    """Participants the server reports in a few rooms (`GET /api/rooms/<id>`), -1 on error."""
    token = idp.mint(sub="bench-observer", role="chair", depts=["cardiology"], rooms=rooms)
    counts: dict[str, int] = {}
    for room in rooms:
        async with session.get(
            f"{server.url}/api/rooms/{room}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            counts[room] = int((await response.json())["participants"]) if response.ok else -1
    return counts


async def measure(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    config: BenchConfig,
    tokens: list[tuple[str, str]],
    warm_tokens: list[tuple[str, str]],
) -> Measurement:
    """Warm up, then both phases against a ready server; the participants are left joined."""
    # At most half the participants, so the capacity phase always has joins to time.
    latency_count = min(config.participants // 2, round(config.rate * config.latency_seconds))
    crowd = Crowd()
    await warm_up(session, server, warm_tokens)
    rss_before = server.rss_kib()

    latencies = await latency_phase(session, server, tokens[:latency_count], config.rate, crowd)
    joined, seconds = await capacity_phase(
        session, server, tokens[latency_count:], config.concurrency, crowd
    )
    await asyncio.sleep(config.settle_seconds)
    rss_after = server.rss_kib()
    idle = sum(p.open for p in crowd.participants)
    return Measurement(latencies, joined, seconds, idle, rss_before, rss_after, crowd)


async def run(
    config: BenchConfig,
    server: ServeProcess,
    idp: DevelopmentIdP,
    tokens: list[tuple[str, str]],
    warm_tokens: list[tuple[str, str]],
) -> dict[str, Any]:
    """Both phases against a ready `consilium serve`; the result line as a dict."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        m = await measure(session, server, config, tokens, warm_tokens)
        n_rooms = -(-config.participants // config.per_room)
        sample = sorted({f"bench-{i}" for i in (0, n_rooms // 2, n_rooms - 1)})
        counts = await room_counts(session, server, idp, sample)
        healthy = server.healthy()
        await close_all(m.crowd)

    latencies = m.latencies
    return {
        "joins_per_s": m.joins_per_s,
        "join_latency_p95_ms": percentile_ms(latencies, 95),
        "idle_participants": m.idle,
        "kib_per_participant": m.kib_per_participant,
        "join_latency_p50_ms": percentile_ms(latencies, 50),
        "join_latency_max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "latency_joins": len(latencies),
        "latency_rate_per_s": config.rate,
        "capacity_joins": m.joined,
        "capacity_seconds": round(m.seconds, 2),
        "failed_joins": sum(m.crowd.failures.values()),
        "failures": dict(m.crowd.failures),
        "participants_target": config.participants,
        "participants_per_room": config.per_room,
        "server_rss_mib_before": round(m.rss_before / 1024, 1),
        "server_rss_mib_after": round(m.rss_after / 1024, 1),
        "server_room_participants": counts,
        "server_healthy": healthy,
    }


async def run_baseline(
    config: BenchConfig,
    server: BaselineProcess,
    tokens: list[tuple[str, str]],
    warm_tokens: list[tuple[str, str]],
) -> dict[str, Any]:
    """The same phases, client code, tokens and rate against the bare aiohttp baseline."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        m = await measure(session, server, config, tokens, warm_tokens)
        await close_all(m.crowd)
    return {
        "baseline_kib_per_participant": m.kib_per_participant,
        "baseline_join_latency_p95_ms": percentile_ms(m.latencies, 95),
        "baseline_join_latency_p50_ms": percentile_ms(m.latencies, 50),
        "baseline_joins_per_s": m.joins_per_s,
        "baseline_idle_participants": m.idle,
        "baseline_failed_joins": sum(m.crowd.failures.values()),
        "baseline_failures": dict(m.crowd.failures),
        "baseline_rss_mib_before": round(m.rss_before / 1024, 1),
        "baseline_rss_mib_after": round(m.rss_after / 1024, 1),
    }


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    """The run the command line asks for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--participants", type=int, default=2000, help="idle participants")
    parser.add_argument("--rate", type=float, default=100.0, help="joins/s in the latency phase")
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="length of the latency phase"
    )
    parser.add_argument("--per-room", type=int, default=10, help="participants per room")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="joins in flight in the capacity phase"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 200 participants, 2 s of latency"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the bare aiohttp baseline server"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.participants, args.latency_seconds = 200, 2.0
    if args.participants < 1 or args.rate <= 0 or args.per_room < 1:
        parser.error("--participants, --rate and --per-room must be positive")
    return BenchConfig(
        participants=args.participants,
        rate=args.rate,
        latency_seconds=args.latency_seconds,
        per_room=args.per_room,
        concurrency=args.concurrency,
        baseline=not args.no_baseline,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (ours, then the baseline) and print its JSON line."""
    from signaling.devidp import DevelopmentIdP

    config = parse_args(argv)
    fd_limit = raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="consilium-bench-"))
    started = time.monotonic()
    try:
        server = ServeProcess(workdir / "data", config)
        try:
            server.wait_ready()
            idp = DevelopmentIdP.load_or_create(server.data_dir)
            # Minted up front so token signing is not part of the measured join time; the
            # baseline is sent the very same messages.
            tokens = [
                (mint(idp, i, room_of(i, config)), room_of(i, config))
                for i in range(config.participants)
            ]
            warm_tokens = warm_up_tokens(idp, config.per_room)
            result = asyncio.run(run(config, server, idp, tokens, warm_tokens))
        except BaseException:
            print(server.output(), file=sys.stderr)
            raise
        finally:
            shutdown_s = server.stop()
        result["server_shutdown_s"] = round(shutdown_s, 2)

        if config.baseline:
            baseline = BaselineProcess(workdir)
            try:
                baseline.wait_ready()
                result.update(asyncio.run(run_baseline(config, baseline, tokens, warm_tokens)))
            except BaseException:
                print(baseline.output(), file=sys.stderr)
                raise
            finally:
                baseline.stop()
            result["overhead_kib_per_participant"] = round(
                result["kib_per_participant"] - result["baseline_kib_per_participant"], 2
            )
        else:
            for key in BASELINE_KEYS:
                result[key] = None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["fd_limit"] = fd_limit
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
