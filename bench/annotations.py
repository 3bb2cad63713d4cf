"""Annotation benchmark: op latency to another participant while video flows, and ops per second.

A `MediaServer` runs in its own process (`--server`, started by the bench: it gets its own core,
as `consilium serve` does in bench/forwarding.py), its media and data channels on loopback UDP;
its signalling (join, offer, answer) crosses that process's stdin and stdout as JSON lines, so no
signalling server and no image store are needed (the server process has a lookup for one CT
image). The participants are real aiortc clients in this process. It prints one JSON line: the
keys `latency_p95_ms` and `ops_per_s` are a contract other tools read; the rest are extras.

    python bench/annotations.py            # 4 participants with video, 10 s + 10 s
    python bench/annotations.py --quick    # CI smoke: 2 participants, 2 s + 2 s

The room: every participant publishes the pre-encoded 640x480 VP8 test pattern and the Opus tone
of `bot.testsource` and receives the others' (receivers started without decoders, as in
bench/forwarding.py), so 4-party video flows through the same SFU while ops are measured
(`video_fwd_pkts_per_s` shows it did; `--no-video` leaves it out, for comparison). The room's
annotation log is written, encrypted, to a temporary data dir, as in production.

- `latency_p95_ms` (and `latency_p50_ms`): every participant sends ops at `--rate` per second
  (adds and moves of arrows); for each op, the time from `channel.send` at the sender to the
  arrival of its stamped copy (matched by `client_id`) at each OTHER participant. Both stamps use
  this process's clock; the figure includes this process's own scheduling delay (all the clients
  share it, and the two cores with the SFU).
- `ops_per_s`: every participant sends as fast as its reliable channel takes them, keeping at
  most `--window` of its own ops unacknowledged (its stamped copy not yet back); the stamped ops
  the slowest participant received over the window, per second.
- `server_cpu_s_per_s`: the SFU process's CPU over the throughput window (1.0 = one core busy);
  `client_cpu_s_per_s` this process's.
- `ops_each_second`: the slowest participant's stamped ops received in each second of that window
  (steady, or stalls).
- `handle_us_per_op`: the sans-IO core alone (`RoomAnnotations.handle` with its encrypted log),
  per op, no network.

The per-participant rate bound (`annotation_ops_per_s`, 50/s by default) is raised for the run
(`rate_bound_per_participant`): the bench measures the room's capacity, not the bound.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process import CLOCK_TICK_S, percentile_ms

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# bench/signaling.py shares its name with the package (see bench/forwarding.py).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RELIABLE = "consilium-reliable"
ROOM = "bench-annotations"
IMAGE = "ct-1"
RATE_BOUND = 100_000.0
"""The per-participant rate bound during the run (the bench measures capacity)."""
WARM_UP_TIMEOUT_S = 45.0
"""How long video may take to flow to everyone before the windows start anyway."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run does."""

    participants: int = 4
    """People in the room, each publishing video and audio and receiving the others'."""
    seconds: float = 10.0
    """Length of each measured window (latency, then throughput)."""
    rate: float = 20.0
    """Ops per second each participant sends during the latency window."""
    window: int = 64
    """Unacknowledged ops each participant may have in flight during the throughput window."""
    video: bool = True
    """Publish the video clip and the tone (`--no-video`: data channels only, for comparison)."""


class Participant:
    """A bench participant: its media client, and the stamped ops it received."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client
        self.received = 0
        self.arrivals: dict[str, float] = {}
        self.own_back = 0
        self.errors = 0
        client.data_listeners.append(self._on_message)

    def _on_message(self, label: str, message: dict[str, Any]) -> None:
        now = time.perf_counter()
        kind = message.get("type")
        if kind == "event":
            self.received += 1
            if message["author"] == self.name:
                self.own_back += 1
            else:
                self.arrivals[message["client_id"]] = now
        elif kind == "error":
            self.errors += 1


def op_message(client_id: str, shape_id: str, n: int, add: bool) -> dict[str, Any]:
    """An arrow added, or moved."""
    points = [[n % 500, (n * 7) % 500], [(n * 3) % 500, (n * 5) % 500]]
    body: dict[str, Any]
    if add:
        body = {"kind": "add", "shape": {"id": shape_id, "type": "arrow", "points": points,
                                         "color": "#ff8800"}}  # fmt: skip
    else:
        body = {"kind": "edit", "shape_id": shape_id, "points": points}
    return {"type": "op", "client_id": client_id, "image_id": IMAGE, "frame": 0, "op": body}


async def latency_window(people: list[Participant], config: BenchConfig) -> list[float]:
    """Each participant sends `rate` ops per second; the latency of each to each other one."""
    sent: dict[str, tuple[str, float]] = {}
    counter = itertools.count()

    async def sender(person: Participant) -> None:
        shape_id = f"{person.name}-lat"
        interval = 1.0 / config.rate
        deadline = time.perf_counter() + config.seconds
        first = True
        while time.perf_counter() < deadline:
            client_id = f"{person.name}:lat:{next(counter)}"
            message = op_message(client_id, shape_id, len(sent), add=first)
            first = False
            sent[client_id] = (person.name, time.perf_counter())
            person.client.send_json(RELIABLE, message)
            await asyncio.sleep(interval)

    await asyncio.gather(*(sender(p) for p in people))
    await asyncio.sleep(1.0)  # the last ones arrive
    latencies = []
    for client_id, (author, at) in sent.items():
        for person in people:
            if person.name != author:
                arrived = person.arrivals.get(client_id)
                if arrived is not None:
                    latencies.append(arrived - at)
    return latencies


async def throughput_window(
    people: list[Participant], config: BenchConfig, server_pid: int
) -> dict[str, Any]:
    """Everyone sends as fast as the window of unacknowledged ops allows."""
    stop = False
    sent = {p.name: 0 for p in people}

    async def sender(person: Participant) -> None:
        shape_id = f"{person.name}-tp"
        base_back, n = person.own_back, 0
        person.client.send_json(RELIABLE, op_message(f"{person.name}:tp:add", shape_id, 0, True))
        n += 1
        while not stop:
            if n - (person.own_back - base_back) >= config.window:
                await asyncio.sleep(0.001)
                continue
            client_id = f"{person.name}:tp:{n}"
            person.client.send_json(RELIABLE, op_message(client_id, shape_id, n, add=False))
            n += 1
            if n % 16 == 0:
                await asyncio.sleep(0)
        sent[person.name] = n

    tasks = [asyncio.ensure_future(sender(p)) for p in people]
    await asyncio.sleep(1.0)  # ramp up
    before = [p.received for p in people]
    started = time.perf_counter()
    cpu, server_cpu = time.process_time(), process_cpu_s(server_pid)
    per_second, last = [], min(before)
    while (remaining := config.seconds - (time.perf_counter() - started)) > 0:
        await asyncio.sleep(min(1.0, remaining))
        now = min(p.received for p in people)
        per_second.append(now - last)
        last = now
    elapsed = time.perf_counter() - started
    cpu_s, server_cpu_s = time.process_time() - cpu, process_cpu_s(server_pid) - server_cpu
    after = [p.received for p in people]
    stop = True
    await asyncio.gather(*tasks)
    rates = [(a - b) / elapsed for a, b in zip(after, before, strict=True)]
    return {"ops_per_s": min(rates), "max_ops_per_s": max(rates),
            "server_cpu_s_per_s": server_cpu_s / elapsed, "client_cpu_s_per_s": cpu_s / elapsed,
            "ops_sent": sum(sent.values()), "ops_each_second": per_second}  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


def handle_us_per_op(workdir: Path, count: int) -> float:
    """The sans-IO core alone: `RoomAnnotations.handle` with its encrypted log, per op."""
    from annotations.log import AnnotationLog, log_path
    from annotations.room import RoomAnnotations
    from core.imageref import ImageRef
    from sfu.server import MediaSettings

    settings = MediaSettings(annotation_ops_per_s=RATE_BOUND, annotation_burst=int(RATE_BOUND))
    path = log_path(workdir / "core", ROOM)
    core = RoomAnnotations(ROOM, settings, lambda room, image: ImageRef(1, (0.5, 0.5)),
                           AnnotationLog(path, ROOM, bytes(32)))  # fmt: skip
    permissions = frozenset({"annotate"})
    raws = [json.dumps(op_message(f"c{n}", "s", n, add=n == 0)) for n in range(count)]
    started = time.perf_counter()
    for raw in raws:
        core.handle("p", permissions, raw)
    elapsed = time.perf_counter() - started
    core.close()
    return elapsed / count * 1e6


def server_settings(workdir: Path) -> Any:
    """The SFU's settings: one CT image, an encrypted log under `workdir`, the bound raised."""
    from core.imageref import ImageRef
    from sfu.ice import IceSettings
    from sfu.server import MediaSettings

    ct = ImageRef(1, (0.5, 0.5))
    return MediaSettings(
        ice=IceSettings(host_addresses=("127.0.0.1",)),
        data_dir=workdir,
        room_key=lambda room_id: bytes(range(32)),
        image_info=lambda room_id, image_id: ct if image_id == IMAGE else None,
        annotation_ops_per_s=RATE_BOUND,
        annotation_burst=int(RATE_BOUND),
    )


async def serve(workdir: Path) -> None:
    """`--server`: a MediaServer whose signalling is JSON lines on stdin (requests) and stdout
    (answers and the server's messages to each participant)."""
    from msgspec import to_builtins

    from sfu.server import MediaServer

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def write(line: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    server = MediaServer(
        server_settings(workdir),
        lambda name, event: write({"to": name, "message": to_builtins(event)}),
    )
    await server.start()
    write({"ready": True})
    while line := await reader.readline():
        request = json.loads(line)
        name, kind = request.get("name", ""), request["op"]
        if kind == "join":
            await server.join(ROOM, name, frozenset(request["permissions"]))
        elif kind == "offer":
            sdp = await server.offer(name, "publish", request["sdp"])
            write({"to": name, "message": {"type": "answer", "pc": "publish", "sdp": sdp}})
        elif kind == "answer":
            await server.answer(name, "subscribe", request["sdp"])
        elif kind == "stats":
            room = server.rooms.get(ROOM)
            seq = room.annotations.seq if room and room.annotations else 0
            write({"stats": {**server.stats(), "seq": seq}})
    await server.close()


class ServerBridge:
    """The `--server` process, and the clients whose signalling crosses its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.clients: dict[str, Any] = {}
        self._stats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())
        self._tasks: set[asyncio.Task[None]] = set()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "ready" in message:
                self._ready.set_result(None)
            elif "stats" in message:
                self._stats.put_nowait(message["stats"])
            else:
                task = asyncio.ensure_future(self.clients[message["to"]].handle(message["message"]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def request(self, **request: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")

    async def ready(self) -> None:
        await asyncio.wait_for(self._ready, 60)

    async def stats(self) -> dict[str, Any]:
        self.request(op="stats")
        return await asyncio.wait_for(self._stats.get(), 10)

    async def join(self, name: str, tracks: list[Any], permissions: list[str]) -> Any:
        from bot.client import MediaClient

        async def send(message: dict[str, Any]) -> None:
            self.request(op=message["type"], name=name, sdp=message["sdp"])

        client = MediaClient(send, tracks, decode=False)
        self.clients[name] = client
        self.request(op="join", name=name, permissions=permissions)
        await client.publish()
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def run(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    """Start the SFU process, join the room, let video flow, run both windows."""
    from bot.testsource import ReplayAudioTrack, ReplayVideoTrack

    log_file = (workdir / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--server", str(workdir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
    )  # fmt: skip
    bridge = ServerBridge(proc)
    try:
        await bridge.ready()
        people = []
        permissions = ["publish_audio", "publish_video", "annotate"]
        for i in range(config.participants):
            tracks = [ReplayAudioTrack(), ReplayVideoTrack()] if config.video else []
            client = await asyncio.wait_for(bridge.join(f"p{i}", tracks, permissions), 30)
            people.append(Participant(f"p{i}", client))
        for person in people:
            await person.client.sync()
        await until(lambda: all(
            sum(t.kind == "video" for t in p.client.stats.tracks.values()) >= len(people) - 1
            for p in people) or not config.video, WARM_UP_TIMEOUT_S)  # fmt: skip
        await asyncio.sleep(1.0)
        forwarded = (await bridge.stats())["forwarded_packets"]
        started = time.monotonic()
        latencies = await latency_window(people, config)
        fwd_pkts_per_s = ((await bridge.stats())["forwarded_packets"] - forwarded) / (
            time.monotonic() - started
        )
        throughput = await throughput_window(people, config, proc.pid)
        await asyncio.sleep(0.5)
        return {
            "latency_p95_ms": percentile_ms(latencies, 95),
            "latency_p50_ms": percentile_ms(latencies, 50),
            "latency_samples": len(latencies),
            **throughput,
            "video_fwd_pkts_per_s": round(fwd_pkts_per_s, 1),
            "stamped_seq": (await bridge.stats())["seq"],
            "errors": sum(p.errors for p in people),
        }
    except BaseException:
        log_file.flush()
        print((workdir / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        await bridge.close()
        log_file.close()


async def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait until `check()` holds, or `timeout` seconds (then go on anyway)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # noqa: ASYNC110 (a deadline too)
        await asyncio.sleep(0.1)


def parse_args(argv: list[str] | None) -> BenchConfig | Path:
    """The run's configuration from the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--participants", type=int, default=4, help="people in the room")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each window")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="ops/s per participant in the latency window")  # fmt: skip
    parser.add_argument("--window", type=int, default=64,
                        help="unacknowledged ops per participant, throughput window")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2 participants, 2 s")
    parser.add_argument("--no-video", action="store_true", help="data channels only")
    parser.add_argument("--server", type=Path, metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server is not None:
        return args.server
    if args.quick:
        return BenchConfig(participants=2, seconds=2.0, rate=args.rate, window=args.window,
                           video=not args.no_video)  # fmt: skip
    return BenchConfig(participants=args.participants, seconds=args.seconds, rate=args.rate,
                       window=args.window, video=not args.no_video)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON line."""
    config = parse_args(argv)
    if isinstance(config, Path):
        asyncio.run(serve(config))
        return 0
    from bot.testsource import encode_test_pattern, encode_tone
    from sfu.ice import IceSettings, install

    install(IceSettings(host_addresses=("127.0.0.1",)))
    encode_test_pattern()
    encode_tone()
    workdir = Path(tempfile.mkdtemp(prefix="consilium-bench-annotations-"))
    started = time.monotonic()
    try:
        measured = asyncio.run(run(config, workdir))
        core_us = handle_us_per_op(workdir, 2000 if config.seconds < 5 else 20000)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    line: dict[str, Any] = {
        "latency_p95_ms": measured.pop("latency_p95_ms"),
        "ops_per_s": round(measured.pop("ops_per_s"), 1),
        "participants": config.participants,
        "handle_us_per_op": round(core_us, 1),
        "rate_bound_per_participant": RATE_BOUND,
        "latency_rate_per_participant": config.rate,
        "video": config.video,
    }
    for key, value in measured.items():
        line[key] = round(value, 3) if isinstance(value, float) else value
    line["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
