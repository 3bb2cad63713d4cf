"""Real-networks benchmark: what a subscriber on a bad link gets from a room of simulcasting
cameras, how fast the SFU moves a subscriber whose link drops, and how fast an ICE restart brings
media back — with real Chromium subscribers relayed through real coturn behind nettest's impaired
UDP proxies.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/simulcast.py'
    .venv/bin/python bench/simulcast.py --seconds 10       # shorter windows
    .venv/bin/python bench/simulcast.py --quick            # smoke: short waits and windows

(As root in a loopback-only namespace, as the tests run: every ICE stack gathers loopback only.)

The room: four publishers, `consilium bot --simulcast` in one process of their own, each a
640x360 camera in three layers (160x90 at 80 kbps, 320x180 at 267 kbps, 640x360 at 800 kbps)
sending a keyframe only when the SFU asks, as a browser does; and three subscribers, each a
headless Chromium (own profile) at 1600x900 in the web client, relay-only through coturn behind
its own proxy, camera and microphone turned off once in (they publish nothing):
- `constrained`: 800 kbps down, 5% loss each way, 100 ms RTT (the issue's hotel link);
- `clean_a`, `clean_b`: no impairment;
- `dropping`: 3 Mbps down (for the layer switch below; not in the window's figures).

Each page samples its own inbound video statistics (the web client's `consilium.stats()`) every
100 ms: frames decoded and the decoded width, per camera. From those, over a window:
- `*_fps_min`, `*_fps_median`: frames decoded per second per camera, over the subscribers of
  that kind (`constrained`, or the two `clean` ones);
- `*_freeze_share`: time spent in gaps of more than 0.5 s between decoded frames (a camera that
  decodes nothing is frozen all along), over the time measured;
- `*_layer_share`: share of samples per decoded width (`{"160": 0.9, ...}`): which layer arrived.

Then, with the same room (simulcast run only):
- `switch_s`: after the window, `dropping`'s link (3 Mbps since it joined) drops to 500 kbps: the
  time until the layers it decodes fit (their nominal bitrates sum to no more than 500 kbps; a
  camera the SFU paused for that link counts as 0, width 0);
  `switch_layers_before` and `switch_layers_after`: the widths decoded before and after;
  `switch_back_s`, `switch_layers_back`: then the link returns to 3 Mbps: the time until the
  layers decoded need more than 500 kbps again (probes find the room), and the widths then.
- `join_dropped`: per subscriber, the datagrams its proxy dropped on the way down by 3 s after
  its subscribe session connected (a subscriber starts at 300 kbps and probes its link, so a
  narrow link is not flooded at join); `clean_top_layer_s`: per clean subscriber, the seconds
  from joining (the cameras already on, as in a meeting under way) until every camera is
  decoded at 640 wide (None: not within the run); `probes`: the node's probe counters after the
  window (`sent`, `succeeded`, `failed`).
- `ice_restart_s`: clean_a's network changes (its proxy closes, a new one is the only way, the
  page hears `online`): the time until frames are decoded again from every camera;
  `ice_restart_page_ms`: what the page itself measured (both sessions on a new pair);
  `ice_restart_rejoined`, `ice_restart_lobby`, `ice_restart_consent`: whether it rejoined, waited
  in a lobby or was asked for consent again (all must be false).

`baseline_*`: the same window with the publishers as before simulcast (`consilium bot` without
`--simulcast`: one 640x360 layer at 800 kbps; that bot also sends a keyframe every second unasked,
which only helps the baseline). `node_cpu`: the node's CPU over the window, as a share of one core.

It measures; it does not judge. One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process import ServerProcess, cpu_s, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# bench/signaling.py shares its name with the package (see bench/forwarding.py).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH_DIR]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nettest.impairment import CLEAN, Impairment, link  # noqa: E402
from nettest.udp_proxy import ImpairedUdpProxy  # noqa: E402
from signaling.devidp import DevelopmentIdP  # noqa: E402
from tests.fixtures.browser import CHROMIUM_ARGS, BrowserTab, chromium_executable  # noqa: E402
from tests.fixtures.turnserver import TURN_HOST, TurnServer, start_turnserver  # noqa: E402
from tests.test_web_ice_restart import NETWORK  # noqa: E402

ROOM = "bench-simulcast"
PUBLISHERS = 4
CAMERA = "640x360"
CAMERA_BPS = 800_000
LAYER_BPS = {160: 80_000, 320: 267_000, 640: 800_000}
"""Each layer's nominal bitrate by its decoded width (bot.simulcast: 1/10, 1/3, 1 of the top)."""
CONSTRAINED = link(loss=0.05, rtt_ms=100, down_kbps=800)
SWITCH_FROM_KBPS, SWITCH_TO_KBPS = 3000, 500
DROPPING = link(down_kbps=SWITCH_FROM_KBPS)
VIEWPORT = (1600, 900)
WARM_UP_S = 12.0
"""After every page decodes every camera: the estimates settle, the layers are chosen."""
SWITCH_WAIT_S = 10.0
"""How long after the drop the layers it decodes are watched."""
QUICK = {"seconds": 4.0, "warm_up_s": 3.0}
"""`--quick`: the same run with short waits (a smoke test of the bench, not figures)."""
JOIN_DROPS_S = 3.0
"""`join_dropped`: datagrams each subscriber's proxy dropped by this long after it connected."""
GAP_S = 0.5
"""A gap between decoded frames longer than this is a freeze (the issue's measure)."""
JOIN_TIMEOUT_S = 60.0

# Every 100 ms: [wall ms, [[participant, frames decoded, width, paused] per camera that is on]];
# paused: the SFU said it sends nothing of that camera for now (this page's link cannot carry
# it).
SAMPLER = """
(() => {
  window.__samples = [];
  setInterval(async () => {
    if (!window.consilium?.stats) return;
    const stats = await window.consilium.stats();
    const state = window.consilium.state();
    const paused = new Set(state.tracks
      .filter((t) => t.kind === "video" && t.source === "camera" && t.paused)
      .map((t) => t.participant_id));
    // The other subscribers' cameras, turned off once they are in, are no cameras to watch.
    const off = new Set(state.participants.filter((p) => p.video_muted)
      .map((p) => p.participant_id));
    const videos = stats.inbound.filter((s) => s.kind === "video" && s.source === "camera"
                                        && !off.has(s.participantId));
    window.__samples.push([Date.now(), videos.map((s) => [s.participantId, s.framesDecoded,
                                                          s.frameWidth,
                                                          paused.has(s.participantId)])]);
  }, 100);
})();
"""


class Node(ServerProcess):
    """`consilium serve`: loopback media, coturn handed to clients, clients relay-only."""

    name = "consilium serve"

    def __init__(self, workdir: Path, turn: TurnServer, log_level: str = "warning") -> None:
        self.data_dir = workdir / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
        env.update(
            {
                "CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1",
                "CONSILIUM_TURN_URLS": turn.udp_url,
                "CONSILIUM_TURN_SECRET": turn.secret,
                "CONSILIUM_ICE_TRANSPORT_POLICY": "relay",
                "CONSILIUM_LOG_LEVEL": log_level,
                "CONSILIUM_JOIN_ATTEMPTS_PER_IP_PER_MIN": "1000000",
            }
        )
        super().__init__(
            [sys.executable, "-m", "consilium.cli", "serve", "--port", str(port),
             "--data-dir", str(self.data_dir)],
            env, REPO, workdir / "serve.log", port,
        )  # fmt: skip


def publishers(node: Node, simulcast: bool) -> subprocess.Popen[bytes]:
    """The four cameras, one bot process; they receive nothing (`--no-subscribe`)."""
    argv = [
        sys.executable, "-m", "consilium.cli", "bot", "--server", node.url, "--room", ROOM,
        "--count", str(PUBLISHERS), "--prefix", "cam", "--data-dir", str(node.data_dir),
        "--no-subscribe", "--video-size", CAMERA, "--video-bitrate", str(CAMERA_BPS),
        "--ice-address", "127.0.0.1",
    ]  # fmt: skip
    if simulcast:
        argv.append("--simulcast")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@dataclass
class Subscriber:
    """One Chromium subscriber and the proxy its relayed media crosses."""

    name: str
    proxy: ImpairedUdpProxy
    page: Any
    context: Any
    joined_ms: float = 0.0
    """When it clicked Join (wall clock ms, as the page's samples)."""
    join_dropped: asyncio.Task[int] | None = None
    """Datagrams its proxy dropped on the way down by `JOIN_DROPS_S` after it connected."""

    async def samples(self) -> list[Any]:
        return list(await self.page.evaluate("window.__samples"))

    async def state(self) -> dict[str, Any]:
        return dict(await self.page.evaluate("window.consilium.state()"))


def turn_via(port: int) -> str:
    return f"turn:{TURN_HOST}:{port}?transport=udp"


async def open_subscriber(
    playwright: Any, workdir: Path, node: Node, turn: TurnServer, name: str,
    impairment: tuple[Impairment, Impairment],
) -> Subscriber:  # fmt: skip
    """Chromium joins as `name` through its own proxy in front of coturn, then turns its camera
    and microphone off."""
    up, down = impairment
    proxy = ImpairedUdpProxy((TURN_HOST, turn.port), up=up, down=down, seed=len(name))
    await proxy.start()
    profile = tempfile.mkdtemp(prefix=f"chromium-{name}-", dir=workdir)
    context = await playwright.chromium.launch_persistent_context(
        profile, executable_path=str(chromium_executable()), headless=True,
        args=list(CHROMIUM_ARGS), viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]},
    )  # fmt: skip
    await context.add_init_script(NETWORK % json.dumps([turn.udp_url, turn_via(proxy.port)]))
    await context.add_init_script(SAMPLER)
    page = context.pages[0] if context.pages else await context.new_page()
    token = DevelopmentIdP.load_or_create(node.data_dir).mint(
        sub=f"viewer-{name}", role="chair", name=name, depts=["cardiology"], rooms=[ROOM]
    )
    tab = BrowserTab(context, page)  # (its `until` polls: the page's CSP refuses eval)
    await page.goto(f"{node.url}/join/{ROOM}#token={token}")
    await tab.until("window.consilium?.state().screen === 'join'", 30)
    await tab.until("document.getElementById('preview-video').videoWidth > 0", 30)
    joined_ms = time.time() * 1000
    await page.click("#join-button")
    dropped = asyncio.get_running_loop().create_task(drops_at_join(tab, proxy))
    await tab.until("window.consilium.state().screen === 'room'", 30)
    await page.click("#camera-button")
    await page.click("#mic-button")
    return Subscriber(name, proxy, page, context, joined_ms, dropped)


async def drops_at_join(tab: BrowserTab, proxy: ImpairedUdpProxy) -> int:
    """The datagrams `proxy` dropped on the way down by `JOIN_DROPS_S` after the page's
    subscribe session connected (when the media starts)."""
    await tab.until("window.consilium.state().connection.subscribe === 'connected'", 60)
    await asyncio.sleep(JOIN_DROPS_S)
    return proxy.counters["down"].dropped


def probe_metrics(url: str) -> dict[str, int]:
    """The node's `consilium_sfu_downlink_probes_*` counters now (`sent`, `succeeded`,
    `failed`, over the subscribers connected)."""
    with urllib.request.urlopen(url + "/metrics") as response:
        lines = response.read().decode().splitlines()
    prefix = "consilium_sfu_downlink_probes_"
    return {
        line.split()[0].removeprefix(prefix): int(float(line.split()[1]))
        for line in lines if line.startswith(prefix)
    }  # fmt: skip


def node_metric(url: str, name: str) -> float:
    """One of the node's metrics now (`consilium_sfu_<name>`; 0 when absent)."""
    with urllib.request.urlopen(url + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"consilium_sfu_{name} "):
                return float(line.split()[1])
    return 0.0


async def until_publishing(url: str, tracks: int, timeout_s: float) -> None:
    """The node has `tracks` published tracks and media arrives (the cameras are on before the
    subscribers join, as in a meeting under way; the bot process encodes its clips first),
    then a second more: each layer's bitrate is measured over its first second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        published = await asyncio.to_thread(node_metric, url, "published_tracks")
        received = await asyncio.to_thread(node_metric, url, "received_packets")
        if published >= tracks and received > 0:
            await asyncio.sleep(1.5)
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the cameras did not publish within {timeout_s:.0f} s")


def top_layer_s(subscriber: Subscriber, samples: list[Any]) -> float | None:
    """Seconds from joining until every camera is decoded at the top layer's width."""
    top = max(LAYER_BPS)
    reached = [t for t, widths in decoded_widths(samples, subscriber.joined_ms)
               if widths and min(widths) >= top]  # fmt: skip
    return round((reached[0] - subscriber.joined_ms) / 1000, 2) if reached else None


def cameras_in(samples: list[Any]) -> set[str]:
    return {participant for _, videos in samples for participant, *_ in videos if participant}


async def until_every_camera(subscribers: list[Subscriber], timeout_s: float) -> None:
    """Every page decodes every publisher's camera."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = 0
        for subscriber in subscribers:
            latest = (await subscriber.samples())[-1:]
            decoding = {p for p, frames, *_ in (latest[0][1] if latest else []) if frames > 0}
            ready += len(decoding) >= PUBLISHERS
        if ready == len(subscribers):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("not every page decodes every camera in time")


def figures(samples: list[Any], start_ms: float, end_ms: float) -> dict[str, Any]:
    """fps, freeze share and layer share of every camera a page decoded in [start, end]."""
    inside = [(t, videos) for t, videos in samples if start_ms <= t <= end_ms]
    per_camera: dict[str, list[tuple[float, int, int]]] = {}
    for t, videos in inside:
        for participant, frames, width, *_ in videos:
            if participant:
                per_camera.setdefault(participant, []).append((t, frames, width))
    span_s = (end_ms - start_ms) / 1000
    fps, freeze, widths = [], [], []
    for series in per_camera.values():
        fps.append((series[-1][1] - series[0][1]) / span_s)
        moved = [t for (t, frames, _), (_, before, _) in zip(series[1:], series, strict=False)
                 if frames > before]  # fmt: skip
        edges = [start_ms, *moved, end_ms]
        gaps = [b - a for a, b in itertools.pairwise(edges) if b - a > GAP_S * 1000]
        freeze.append(sum(gaps) / 1000 / span_s)
        widths.extend(width for _, _, width in series)
    missing = PUBLISHERS - len(per_camera)  # a camera never decoded: frozen all along
    fps.extend([0.0] * missing)
    freeze.extend([1.0] * missing)
    return {"fps": fps, "freeze": freeze, "widths": widths}


def summary(prefix: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    fps = [f for run in runs for f in run["fps"]]
    freeze = [f for run in runs for f in run["freeze"]]
    widths = [w for run in runs for w in run["widths"]]
    shares = {str(w): round(widths.count(w) / len(widths), 3) for w in sorted(set(widths))}
    return {
        f"{prefix}_fps_min": round(min(fps), 1) if fps else None,
        f"{prefix}_fps_median": round(statistics.median(fps), 1) if fps else None,
        f"{prefix}_freeze_share": round(statistics.mean(freeze), 4) if freeze else None,
        f"{prefix}_layer_share": shares,
    }


@dataclass(frozen=True)
class Timing:
    """How long each part of a run lasts."""

    seconds: float = 20.0
    """The measured window."""
    warm_up_s: float = WARM_UP_S


async def room(
    workdir: Path, timing: Timing, simulcast: bool, extras: bool, log_level: str = "warning"
) -> dict[str, Any]:
    """One room on a fresh node and coturn: the window, then (with `extras`) the switch and
    the ICE restart."""
    from playwright.async_api import async_playwright

    workdir.mkdir(parents=True)  # noqa: ASYNC240 (before anything runs)
    turn = start_turnserver(workdir / "coturn")
    node = Node(workdir, turn, log_level)
    cameras: subprocess.Popen[bytes] | None = None
    subscribers: list[Subscriber] = []
    try:
        node.wait_ready()
        cameras = publishers(node, simulcast)
        await until_publishing(node.url, 2 * PUBLISHERS, JOIN_TIMEOUT_S)
        async with async_playwright() as playwright:
            links = [("constrained", CONSTRAINED), ("clean_a", (CLEAN, CLEAN)),
                     ("clean_b", (CLEAN, CLEAN))]  # fmt: skip
            if extras:
                links.append(("dropping", DROPPING))
            for name, impairment in links:
                subscribers.append(
                    await open_subscriber(playwright, workdir, node, turn, name, impairment)
                )
            await until_every_camera(subscribers, JOIN_TIMEOUT_S)
            await asyncio.sleep(timing.warm_up_s)
            cpu_before, start_ms = cpu_s(node.pid), time.time() * 1000
            await asyncio.sleep(timing.seconds)
            end_ms = time.time() * 1000
            node_cpu = (cpu_s(node.pid) - cpu_before) / ((end_ms - start_ms) / 1000)
            window = {s.name: figures(await s.samples(), start_ms, end_ms) for s in subscribers}
            found = {
                **summary("constrained", [window["constrained"]]),
                **summary("clean", [window["clean_a"], window["clean_b"]]),
                "node_cpu": round(node_cpu, 3),
                "join_dropped": {s.name: await s.join_dropped for s in subscribers
                                 if s.join_dropped is not None},
                "clean_top_layer_s": [top_layer_s(s, await s.samples()) for s in subscribers
                                      if s.name.startswith("clean")],
                "probes": probe_metrics(node.url),
            }  # fmt: skip
            if extras:
                found.update(await layer_switch(subscribers[3]))
                found.update(await ice_restart(subscribers[1], turn))
            for subscriber in subscribers:
                await subscriber.context.close()
        return found
    except BaseException:
        print(node.output()[-3000:], file=sys.stderr)
        if cameras is not None and cameras.poll() is not None and cameras.stderr is not None:
            print(cameras.stderr.read().decode(errors="replace")[-2000:], file=sys.stderr)
        raise
    finally:
        for subscriber in subscribers:
            subscriber.proxy.close()
        if cameras is not None and cameras.poll() is None:
            cameras.kill()
            cameras.wait()
        node.stop()
        turn.stop()


def decoded_widths(samples: list[Any], after_ms: float) -> list[tuple[float, list[int]]]:
    """(time, the width each camera last decoded a frame at since `after_ms`) for each sample
    after `after_ms` by which every camera has decoded one (a frozen camera's width is old news:
    it counts only once it decodes again) or is paused for this link (width 0: nothing sent)."""
    found: list[tuple[float, list[int]]] = []
    previous: dict[str, int] = {}
    latest: dict[str, int] = {}
    for t, videos in samples:
        for participant, frames, width, paused in videos:
            if participant and t > after_ms and paused:
                latest[participant] = 0
            elif participant and t > after_ms and frames > previous.get(participant, frames):
                latest[participant] = width
            if participant:
                previous[participant] = frames
        if t > after_ms and len(latest) >= PUBLISHERS:
            found.append((t, sorted(latest.values())))
    return found


def nominal_bps(widths: list[int]) -> int:
    """What the layers of these decoded widths are sent at, together (0: a paused camera)."""
    return sum(LAYER_BPS.get(width, CAMERA_BPS) for width in widths if width)


async def layer_switch(subscriber: Subscriber) -> dict[str, Any]:
    """3 Mbps, then 500 kbps: how long until the layers decoded fit."""
    before = decoded_widths(await subscriber.samples(), time.time() * 1000 - 1000)
    dropped_ms = time.time() * 1000
    subscriber.proxy.down.impairment = Impairment(rate_kbps=SWITCH_TO_KBPS)
    await asyncio.sleep(SWITCH_WAIT_S)
    after = decoded_widths(await subscriber.samples(), dropped_ms)
    fits = [t for t, widths in after if nominal_bps(widths) <= SWITCH_TO_KBPS * 1000]
    # And back: the link returns to 3 Mbps; how long until it is on more than 500 kbps fits.
    returned_ms = time.time() * 1000
    subscriber.proxy.down.impairment = DROPPING[1]
    await asyncio.sleep(SWITCH_WAIT_S)
    back = decoded_widths(await subscriber.samples(), returned_ms)
    climbed = [t for t, widths in back if nominal_bps(widths) > SWITCH_TO_KBPS * 1000]
    return {
        "switch_s": round((fits[0] - dropped_ms) / 1000, 2) if fits else None,
        "switch_layers_before": before[-1][1] if before else None,
        "switch_layers_after": after[-1][1] if after else None,
        "switch_back_s": round((climbed[0] - returned_ms) / 1000, 2) if climbed else None,
        "switch_layers_back": back[-1][1] if back else None,
    }


async def ice_restart(subscriber: Subscriber, turn: TurnServer) -> dict[str, Any]:
    """The page's network changes: the time until every camera decodes again."""
    before = await subscriber.state()
    second = ImpairedUdpProxy((TURN_HOST, turn.port), seed=99)
    await second.start()
    try:
        subscriber.proxy.close()  # the first network is gone
        changed_ms = time.time() * 1000
        await subscriber.page.evaluate(
            "([via]) => { window.__changeNetwork(via, via);"
            " window.dispatchEvent(new Event('online')); }",
            [turn_via(second.port)],
        )
        back_ms = None
        deadline = time.monotonic() + 30
        while back_ms is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            samples = await subscriber.samples()
            # Back: every camera has decoded more frames than at the change, twice in a row.
            at_change = next((v for t, v in reversed(samples) if t <= changed_ms), [])
            base = {p: f for p, f, *_ in at_change}
            later = [(t, {p: f for p, f, *_ in v}) for t, v in samples if t > changed_ms]
            for (t, frames), (_, next_frames) in itertools.pairwise(later):
                if all(next_frames.get(p, 0) > frames.get(p, 0) > base.get(p, 0) for p in base):
                    back_ms = t
                    break
        after = await subscriber.state()
        received = after.get("received", {})
        return {
            "ice_restart_s": round((back_ms - changed_ms) / 1000, 2) if back_ms else None,
            "ice_restart_page_ms": after.get("iceRestartMs"),
            "ice_restart_rejoined": after.get("participantId") != before.get("participantId")
            or received.get("joined", 0) > 1,
            "ice_restart_lobby": received.get("lobby", 0) > 0,
            "ice_restart_consent": received.get("consent_requested", 0) > 0,
        }
    finally:
        second.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    timing = Timing(**QUICK) if args.quick else Timing(seconds=args.seconds)
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="consilium-bench-simulcast-")
        )
        found: dict[str, Any] = {
            "publishers": PUBLISHERS,
            "seconds": timing.seconds,
            "constrained_link": "800 kbps down, 5% loss, 100 ms RTT",
        }
        found.update(
            await room(Path(tmp, "simulcast"), timing, True, extras=True, log_level=args.log_level)
        )
        if not args.no_baseline:
            baseline = await room(
                Path(tmp, "baseline"), timing, False, extras=False, log_level=args.log_level
            )
            found.update({f"baseline_{key}": value for key, value in baseline.items()})
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="window length (20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short waits and window")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-layer room")
    parser.add_argument(
        "--keep", metavar="DIR", help="work in DIR and keep it (each node's serve.log)"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"),
        help="the nodes' log level (warning; debug: each probe's result, each estimate change)",
    )  # fmt: skip
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
