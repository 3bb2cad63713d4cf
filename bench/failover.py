"""Failover benchmark: how long a meeting's media is gone when the node hosting it is killed.

Starts a real redis-server and, per run, two `consilium serve` nodes sharing it (A and B, each
with its SFU, gathering on loopback), and drives a four-person room over the real WebSocket
protocol with aiortc participants from this process: two connected to A (the first of them
joins first, so the room's media lives on A), two to B. Each publishes the pre-encoded test
pattern and tone of `bot.testsource` and counts the video frames it receives from each other
participant (`bot.frames`: a frame counts when its last packet arrives; no decoding). Once
everyone receives everyone, and B has run long enough to judge other nodes (its start-up wait,
`node_dead_after_s` plus a second), A is killed with SIGKILL.

What happens then is what a hospital's clients do: B's participants are told `media_moved` and
open new media sessions on B (`bot.client.MediaClient.renew`); A's participants see their
WebSocket close and resume, as the web client does, 300 ms later, through B (what a load
balancer in front of both would do): B holds them once it finds A dead and takes them over as
the same participants (`resumed` with `replayed` false, a new `joined`), and they open new media
sessions there. Media is back for a pair (receiver, sender) when three new frames of the
sender's camera reached the receiver after the kill; media is back for everyone when it is back
for every pair of the four (A's two resumed).

Then as many runs of a planned stop: SIGTERM to A, which drains (`signaling/http/drain.py`: its
room's media moves to B, B's two reopen their sessions there; A hands its own participants over,
closes their connections with 1001 and exits), and A's two resume through B once their socket
closed (after the web client's 300 ms), as the same participants. `drain_max_frame_gap_s` (per
run) is the longest any of B's two went without a frame of the other, sampled every 10 ms from
just before the SIGTERM until a second after everyone is back (the aim: 1 s);
`drain_rejoined_media_back_s` (the name kept: other tools read it) when A's two had everyone's
media again, after the SIGTERM; `drain_handed_over_max_frame_gap_s` the longest A's two went
without a frame of anyone meanwhile (their media moves with the room, then their sessions are
opened again as B takes them over: two gaps, each measured on its own against the aim).

Prints one JSON line. The keys `runs`, `participants`, `sigkill_media_back_s` (per run, for
everyone), `sigkill_media_back_p50_s`, `sigkill_media_back_max_s`, `aim_s`,
`drain_max_frame_gap_s` and `drain_frame_gap_aim_s` are a contract other tools read; the rest are
extras: `survivors_media_back_s` (per run, among B's two only), `moved_after_s` (per run, when B's
first participant was told `media_moved`), and the baseline measured in the same runs,
`fresh_join_media_s`: how long the same four took to receive each other when they first joined (a
fresh meeting, on the same nodes). Before failover existed, media never came back after the kill
(the issue: everyone at 0 frames for as long as anyone watched).

    python bench/failover.py             # 5 runs of each
    python bench/failover.py --runs 1    # a quick look

It measures; it does not judge. Run it where ICE sees only loopback, or as is: the nodes and this
process gather on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from process import ServerProcess, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# bench/signaling.py shares its name with the package (see bench/forwarding.py).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bot.member import Member  # noqa: E402
from bot.testsource import ReplayAudioTrack, ReplayVideoTrack  # noqa: E402
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP  # noqa: E402

AIM_S = 5.0
"""The issue's aim: media back for everyone within this long after a SIGKILL."""
DRAIN_GAP_AIM_S = 1.0
"""The issue's aim: a drain leaves no frame gap longer than this."""
DEAD_AFTER_S = 4.0
"""`node_dead_after_s`, the default: a node judges others only this plus a second after it
started."""
RESUME_AFTER_S = 0.3
"""The web client's way back when its node died: a resume after 300 ms (web/js/call.js)."""
NEW_FRAMES = 3
"""Frames of a sender that must arrive after the kill for its media to count as back."""


class Person(Member):
    """A participant over the WebSocket, with its aiortc media client (replayed test media,
    not decoded: frames are counted as they arrive)."""

    def __init__(self, sub: str, ws: aiohttp.ClientWebSocketResponse, joined: dict[str, Any]):
        super().__init__(ws, joined, self._tracks(), track_factory=self._tracks, decode=False)
        self.sub = sub
        self.pid = self.participant_id
        self.moved_at: float | None = None
        self.client.begin_window(time.monotonic())

    @staticmethod
    def _tracks() -> list[Any]:
        return [ReplayAudioTrack(), ReplayVideoTrack()]

    def received(self, message: dict[str, Any]) -> None:
        if message["type"] == "media_moved" and self.moved_at is None:
            self.moved_at = time.monotonic()

    def last_frame_from(self, sender: Person) -> float | None:
        """When the latest frame of `sender`'s camera arrived, on any session so far."""
        tracks = [*self.client.stats.earlier, *self.client.stats.tracks.values()]
        times = [
            t.received_frames.last_frame_at
            for t in tracks
            if t.kind == "video" and t.participant_id == sender.pid
            and t.received_frames.last_frame_at is not None
        ]  # fmt: skip
        return max(times, default=None)

    def frames_from(self, sender: Person) -> int:
        """Video frames of `sender` that reached this participant, on every session so far."""
        tracks = [*self.client.stats.earlier, *self.client.stats.tracks.values()]
        return sum(
            t.received_frames.frames
            for t in tracks
            if t.kind == "video" and t.participant_id == sender.pid
        )


async def join(http: aiohttp.ClientSession, url: str, sub: str, token: str, room: str) -> Person:
    """Join `room` on the node at `url` and publish (until the SFU answered)."""
    ws = await http.ws_connect(url.replace("http", "ws", 1) + "/ws")
    await ws.send_json({"type": "join", "token": token, "room": room})
    joined = json.loads((await ws.receive(timeout=10)).data)
    if joined["type"] != "joined":
        raise RuntimeError(f"{sub} was not let in: {joined}")
    person = Person(sub, ws, joined)
    await person.client.publish()
    return person


def pairs(people: list[Person]) -> list[tuple[Person, Person]]:
    return [(r, s) for r in people for s in people if r is not s]


async def until(check: Any, timeout: float, step: float = 0.02) -> float:
    """Poll `check()` until true; the monotonic time it became true (RuntimeError on time)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await asyncio.sleep(step)
    return time.monotonic()


class Node(ServerProcess):
    """`consilium serve` on the shared Redis, gathering on loopback."""

    name = "consilium serve"

    def __init__(self, workdir: Path, redis_url: str, env: dict[str, str]) -> None:
        port = free_port()
        self.data_dir = workdir / "data"
        full = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
        full.update({"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1",
                     "CONSILIUM_LOG_LEVEL": "warning", **env})  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            [sys.executable, "-m", "consilium.cli", "serve", "--port", str(port), "--data-dir",
             str(self.data_dir), "--redis", redis_url],
            full, REPO, workdir / "serve.log", port,
        )  # fmt: skip


async def watch_gaps(
    group: list[Person], stop: asyncio.Event, receivers: list[Person] | None = None
) -> float:
    """The longest time any participant of `group` (or of `receivers`, from anyone in
    `group`) went without a new frame from any other, sampled every 10 ms until `stop` is
    set."""
    watched = pairs(group) if receivers is None else [
        (r, s) for r in receivers for s in group if r is not s
    ]  # fmt: skip
    longest = 0.0
    while not stop.is_set():
        now = time.monotonic()
        for r, s in watched:
            last = r.last_frame_from(s)
            if last is not None:
                longest = max(longest, now - last)
        await asyncio.sleep(0.01)
    return longest


async def one_run(
    workdir: Path, redis_url: str, room: str, *, drain: bool = False
) -> dict[str, float]:
    """One meeting and one stop of node A: SIGKILL, or (`drain`) SIGTERM, which drains it."""
    a = Node(workdir / "a", redis_url, {})
    a.wait_ready()
    idp = DevelopmentIdP.load_or_create(a.data_dir)
    b = Node(workdir / "b", redis_url, {
        "CONSILIUM_JWKS": str(idp.jwks_path), "CONSILIUM_JWT_ISSUER": DEV_ISSUER,
        "CONSILIUM_JWT_AUDIENCE": DEV_AUDIENCE,
    })  # fmt: skip
    b.wait_ready()
    b_started = time.monotonic()

    def token(sub: str) -> str:
        return idp.mint(sub=sub, role="chair", depts=["cardiology"], rooms=[room])

    people: list[Person] = []
    try:
        async with aiohttp.ClientSession() as http:
            began = time.monotonic()
            for url, sub in ((a.url, "dr-a1"), (a.url, "dr-a2"), (b.url, "dr-b1"),
                             (b.url, "dr-b2")):  # fmt: skip
                people.append(await join(http, url, sub, token(sub), room))
            everyone = pairs(people)
            flowing = await until(lambda: all(r.frames_from(s) > 5 for r, s in everyone), 60)
            fresh_join_s = flowing - began
            await asyncio.sleep(max(0.0, b_started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            survivors = people[2:]
            if drain:
                return await drain_a(http, a, b, people, token, room)

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            killed_at = time.monotonic()
            await asyncio.sleep(RESUME_AFTER_S)
            counts = {(r, s): r.frames_from(s) for r, s in everyone}
            await asyncio.gather(*(p.resume(http, b.url, token(p.sub)) for p in people[:2]))
            now_present = people

            def back(group: list[Person]) -> bool:
                return all(
                    r.frames_from(s) >= counts.get((r, s), 0) + NEW_FRAMES for r, s in pairs(group)
                )

            survivors_back = await until(lambda: back(survivors), 30) - killed_at
            all_back = await until(lambda: back(now_present), 30) - killed_at
            moved = [p.moved_at for p in survivors if p.moved_at is not None]
            return {
                "back_s": all_back,
                "survivors_back_s": survivors_back,
                "moved_after_s": (min(moved) - killed_at) if moved else float("nan"),
                "fresh_join_s": fresh_join_s,
            }
    finally:
        for person in people:
            with contextlib.suppress(Exception):
                await person.close()
        b.stop()
        if a.proc.poll() is None:
            a.proc.kill()


async def drain_a(
    http: aiohttp.ClientSession, a: Node, b: Node, people: list[Person], token: Any, room: str
) -> dict[str, float]:
    """SIGTERM to A: it drains (its room's media moves to B), hands its own participants over,
    closes their connections with 1001 and exits. B's two keep their signalling: the longest
    frame gap between them is the drain's cost to them. A's two resume through B once their
    socket closed (the web client's resume delay, 300 ms), as the same participants."""
    survivors, on_a = people[2:], people[:2]
    stop = asyncio.Event()
    gaps = asyncio.ensure_future(watch_gaps(survivors, stop))
    handed_over_gaps = asyncio.ensure_future(watch_gaps(people, stop, receivers=on_a))
    await asyncio.sleep(0.5)
    a.proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    await until(lambda: all(p.ws.closed for p in on_a), 60)
    closed_at = time.monotonic()
    await asyncio.sleep(RESUME_AFTER_S)
    counts = {(r, s): r.frames_from(s) for r, s in pairs(people)}
    await asyncio.gather(*(p.resume(http, b.url, token(p.sub)) for p in on_a))
    back = await until(
        lambda: all(r.frames_from(s) >= counts[(r, s)] + NEW_FRAMES for r, s in counts), 30
    )
    await asyncio.sleep(1.0)  # the survivors' frames go on after everyone is back
    stop.set()
    gap = await gaps
    a.proc.wait(timeout=30)
    return {
        "gap_s": gap,
        "handed_over_gap_s": await handed_over_gaps,
        "closed_after_s": closed_at - stopped_at,
        "rejoined_back_s": back - stopped_at,
    }


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _round(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


async def main(runs: int) -> dict[str, Any]:
    from sfu.ice import IceSettings, install

    install(IceSettings(host_addresses=("127.0.0.1",)))
    workdir = Path(tempfile.mkdtemp(prefix="consilium-failover-"))
    redis, redis_url = start_redis(workdir)
    results, drains = [], []
    try:
        for run in range(runs):
            results.append(await one_run(workdir / f"run{run}", redis_url, f"failover-{run}"))
        for run in range(runs):
            drains.append(
                await one_run(workdir / f"drain{run}", redis_url, f"drain-{run}", drain=True)
            )
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    back = [r["back_s"] for r in results]
    return {
        "runs": runs,
        "participants": 4,
        "sigkill_media_back_s": _round(back),
        "sigkill_media_back_p50_s": round(statistics.median(back), 3),
        "sigkill_media_back_max_s": round(max(back), 3),
        "aim_s": AIM_S,
        "survivors_media_back_s": _round([r["survivors_back_s"] for r in results]),
        "moved_after_s": _round([r["moved_after_s"] for r in results]),
        "fresh_join_media_s": _round([r["fresh_join_s"] for r in results]),
        "drain_max_frame_gap_s": _round([r["gap_s"] for r in drains]),
        "drain_frame_gap_aim_s": DRAIN_GAP_AIM_S,
        "drain_connections_closed_after_s": _round([r["closed_after_s"] for r in drains]),
        "drain_rejoined_media_back_s": _round([r["rejoined_back_s"] for r in drains]),
        "drain_handed_over_max_frame_gap_s": _round([r["handed_over_gap_s"] for r in drains]),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="kills measured (default 5)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs))))
