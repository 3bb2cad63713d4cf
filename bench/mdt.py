"""MDT benchmark: a whole room on one node, everyone publishing camera and microphone and
receiving everyone else, the clients in processes of their own.

    python bench/mdt.py                                  # 12 participants, 20 s window
    python bench/mdt.py --participants 8 --seconds 30
    python bench/mdt.py --quick                          # CI smoke: 3 participants, 3 s

The node is a real `consilium serve` process (on loopback); the participants are `consilium
bot` processes joining over the real signalling protocol, each publishing the pre-encoded VP8
test pattern (`--video-size`, default 320x240, at `--video-bitrate`, default 300 kbps: the
few hundred kbps a camera tile gets) and the Opus tone, and receiving every other participant
without decoding (frames are counted as their last packets arrive: `bot.frames`). Several bots
share a process (`--bots-per-process`, default 3): twelve aiortc processes on a two-core
machine would spend the CPU switching between interpreters, and one process would put all
twelve clients' packet handling on one core's GIL; four processes of three is both cores busy
with little switching, and leaves each process's event loop well under one core (a bot
receives about a thousand packets a second from eleven others).

Printed: one JSON line. Keys (a contract: scripts read them):
- `participants`, `seconds` (the measured window), `bots_per_process`, `client_processes`;
- `fps_min`, `fps_median`: video frames per second received per subscription (each
  participant's view of each other participant), the lowest and the median;
- `loss`: 1 - packets received / packets expected, over every subscription, from the bots'
  receiver statistics (aiortc inbound-rtp: expected = received + lost), over the window;
  `packets_expected`, `packets_received`;
- `freezes`: gaps over 0.5 s between received video frames, all subscriptions, over the
  window; `freeze_share`: their total length over the total time the subscriptions were
  measured (a subscription that never delivers a frame is frozen all along);
- `node_cpu`: the node's CPU (utime + stime from /proc/<pid>/stat, all threads) over the
  window as a share of one core; `client_cpu`: the bot processes' together, the same way;
- `retransmitted_ratio`: packets the node resent per packet it forwarded over the window;
  `late_dropped_packets`: packets it kept from subscribers for waiting past
  `media_max_delay_s`; `queue_delay_p95_ms`: how long media waited in the node (p95 of its
  histogram's growth over the window);
- `failed_bots`, `errors`: bots that did not join or lost their media (with why);
- `baseline_*`: the same figures for the same room on a node set as before the issue's
  fixes, in the same run: `retransmit_share = 1` (the most the budget allows: the node used to
  resend every packet anyone reported missing), `retransmit_max_age_s = 10` (no playout
  limit in practice), `media_socket_buffer_bytes = 0` (aioice's own 256 KiB receive buffer)
  and `media_max_delay_s = 0` (late media delivered late). `--no-baseline` skips it (null).

The window starts once every participant has published both tracks (the node's
`consilium_sfu_published_tracks`) and `SETTLE_S` more have passed for the last subscriptions
and first keyframes (or after `WARM_UP_TIMEOUT_S` whatever happened): the bench then sends
SIGUSR1 to every bot process, which starts their measured window afresh, and reads the node's
counters and CPU; at its end it reads them again and stops the bots (SIGTERM), which report
the window. On a machine the bots share with the node, `client_cpu` tells how much of it they
took.

It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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

ROOM = "bench-mdt"
QUEUE_DELAY_BUCKET = 'consilium_sfu_queue_delay_ms_bucket{le="'
BASELINE_SETTINGS = {
    "CONSILIUM_RETRANSMIT_SHARE": "1",
    "CONSILIUM_RETRANSMIT_MAX_AGE_S": "10",
    "CONSILIUM_MEDIA_SOCKET_BUFFER_BYTES": "0",
    "CONSILIUM_MEDIA_MAX_DELAY_S": "0",
}
"""The node as the issue measured it: resends without a budget, small socket buffers, no
real-time bound."""
WARM_UP_TIMEOUT_S = 90.0
"""Longest wait for every participant's tracks before the window starts anyway."""
SETTLE_S = 3.0
"""Wait after the last track was published: the last subscriptions and first keyframes."""
BOT_EXIT_GRACE_S = 30.0
"""How long bot processes may take after their run to leave and print their reports."""


@dataclass(frozen=True)
class MdtConfig:
    """What one run does."""

    participants: int = 12
    """People in the room, each publishing and receiving."""
    seconds: float = 20.0
    """Length of the measured window."""
    bots_per_process: int = 3
    """Bots sharing one client process."""
    video_size: str = "320x240"
    """The published test pattern's size."""
    video_bitrate: int = 300_000
    """The published test pattern's bitrate."""
    baseline: bool = True
    """Also measure the node set as before the fixes."""


@dataclass
class RoomRun:
    """What one room on one node measured."""

    reports: list[dict[str, Any]]
    """Each client process's `consilium bot --json` line."""
    node_cpu_s: float
    """The node's CPU over the window."""
    client_cpu_s: float
    """The client processes' CPU over the window."""
    window_s: float
    """The window as the bench timed it."""
    counters: dict[str, float]
    """Growth of the node's /metrics over the window."""
    failures: list[str]
    """Client processes that failed outright (exit status, no report)."""


class NodeProcess(ServerProcess):
    """`consilium serve` for the room, gathering on loopback, join bounds opened for the run."""

    name = "consilium serve"

    def __init__(self, workdir: Path, config: MdtConfig, settings: dict[str, str]) -> None:
        self.data_dir = workdir / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
        env.update(
            {
                "CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1",
                "CONSILIUM_LOG_LEVEL": "warning",
                "CONSILIUM_JOIN_ATTEMPTS_PER_IP_PER_MIN": "1000000",
                "CONSILIUM_MAX_PENDING_CONNECTIONS": "1000000",
                "CONSILIUM_MAX_PARTICIPANTS_PER_ROOM": str(config.participants + 8),
                **settings,
            }
        )
        super().__init__(
            [sys.executable, "-m", "consilium.cli", "serve", "--port", str(port),
             "--data-dir", str(self.data_dir)],
            env, REPO, workdir / "serve.log", port,
        )  # fmt: skip

    def metrics(self) -> dict[str, float]:
        """GET /metrics (served to loopback without a token)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            name: float(value)
            for name, value in (
                line.split() for line in text.splitlines() if line.strip() and line[0] != "#"
            )
        }


def client_processes(config: MdtConfig, node: NodeProcess) -> list[subprocess.Popen[bytes]]:
    """Start the bots, `bots_per_process` to a process, each process minting its own names."""
    processes = []
    sizes = [config.bots_per_process] * (config.participants // config.bots_per_process)
    if config.participants % config.bots_per_process:
        sizes.append(config.participants % config.bots_per_process)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
    for index, count in enumerate(sizes):
        argv = [
            sys.executable, "-m", "consilium.cli", "bot", "--server", node.url, "--room", ROOM,
            "--count", str(count), "--prefix", f"p{index}", "--data-dir", str(node.data_dir),
            "--no-decode", "--json", "--video-size", config.video_size,
            "--video-bitrate", str(config.video_bitrate),
            "--seconds", str(WARM_UP_TIMEOUT_S + SETTLE_S + config.seconds + BOT_EXIT_GRACE_S),
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    return processes


def run_room(config: MdtConfig, workdir: Path, settings: dict[str, str]) -> RoomRun:
    """One room on a fresh node: start it, fill it, measure the window, collect the reports."""
    workdir.mkdir(parents=True)
    node = NodeProcess(workdir, config, settings)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        node.wait_ready()
        clients = client_processes(config, node)
        warm_up(node, clients, 2 * config.participants)
        for process in clients:  # the bots' windows start now
            if process.poll() is None:
                process.send_signal(signal.SIGUSR1)
        before = node.metrics()
        node_before = cpu_s(node.pid)
        clients_before = sum(cpu_s(p.pid) for p in clients)
        window_start = time.monotonic()
        time.sleep(config.seconds)
        window_s = time.monotonic() - window_start
        node_cpu = cpu_s(node.pid) - node_before
        client_cpu = sum(cpu_s(p.pid) for p in clients) - clients_before
        after = node.metrics()
        for process in clients:  # ...and end now: each bot leaves and reports
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        reports, failures = [], []
        for process in clients:
            try:
                out, err = process.communicate(timeout=BOT_EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            lines = out.decode(errors="replace").strip().splitlines()
            if lines:
                reports.append(json.loads(lines[-1]))
            else:
                failures.append(f"exit {process.returncode}: {err.decode(errors='replace')[-300:]}")
        counters = {name: value - before.get(name, 0.0) for name, value in after.items()}
        return RoomRun(reports, node_cpu, client_cpu, window_s, counters, failures)
    except BaseException:
        print(node.output(), file=sys.stderr)
        raise
    finally:
        for process in clients:
            if process.poll() is None:
                process.kill()
                process.wait()
        node.stop()


def warm_up(node: NodeProcess, clients: list[subprocess.Popen[bytes]], tracks: int) -> None:
    """Wait until the node has `tracks` published tracks (or a client process ended, or
    `WARM_UP_TIMEOUT_S`), then `SETTLE_S` more."""
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    while time.monotonic() < deadline and all(p.poll() is None for p in clients):
        if node.metrics().get("consilium_sfu_published_tracks", 0) >= tracks:
            break
        time.sleep(0.5)
    time.sleep(SETTLE_S)


def queue_delay_p95_ms(counters: dict[str, float]) -> float | None:
    """p95 of the media's wait in the node over the window, from the histogram's growth (the
    upper bound of its bucket; the largest finite bound, 5000, means 5 s or more)."""
    from sfu.queue_delay import percentile_ms

    buckets = sorted(
        (float(name[len(QUEUE_DELAY_BUCKET) : -2]), count)
        for name, count in counters.items()
        if name.startswith(QUEUE_DELAY_BUCKET)
    )
    p95 = percentile_ms(buckets, 0.95)
    if p95 == float("inf"):
        return max(bound for bound, _ in buckets if bound != float("inf"))
    return p95


def figures(config: MdtConfig, run: RoomRun) -> dict[str, Any]:
    """The JSON keys of one run (without the `baseline_` prefix)."""
    fps = sorted(value for report in run.reports for value in report.get("video_fps", []))
    received = sum(int(report.get("packets_received", 0)) for report in run.reports)
    lost = sum(max(0, int(report.get("packets_lost", 0))) for report in run.reports)
    expected = received + lost
    frozen_s = sum(float(report.get("frozen_s", 0.0)) for report in run.reports)
    video_s = sum(float(report.get("video_s", 0.0)) for report in run.reports)
    subscriptions = config.participants * (config.participants - 1)
    forwarded = run.counters.get("consilium_sfu_forwarded_packets", 0.0)
    resent = run.counters.get("consilium_sfu_retransmitted_packets", 0.0)
    errors: dict[str, int] = {}
    for report in run.reports:
        for error, count in (report.get("errors") or {}).items():
            errors[error] = errors.get(error, 0) + count
    for failure in run.failures:
        errors[failure] = errors.get(failure, 0) + 1
    return {
        "fps_min": round(fps[0], 1) if len(fps) == subscriptions else 0.0,
        "fps_median": round(statistics.median(fps), 1) if fps else 0.0,
        "video_subscriptions": len(fps),
        "loss": round(lost / expected, 4) if expected else None,
        "packets_expected": expected,
        "packets_received": received,
        "freezes": sum(int(report.get("freezes", 0)) for report in run.reports),
        "freeze_share": round(frozen_s / video_s, 4) if video_s else None,
        "node_cpu": round(run.node_cpu_s / run.window_s, 3),
        "client_cpu": round(run.client_cpu_s / run.window_s, 3),
        "retransmitted_ratio": round(resent / forwarded, 4) if forwarded else None,
        "late_dropped_packets": int(run.counters.get("consilium_sfu_late_dropped_packets", 0)),
        "queue_delay_p95_ms": queue_delay_p95_ms(run.counters),
        "forwarded_pkts_per_s": round(forwarded / run.window_s, 1),
        "failed_bots": sum(int(r.get("failed", 0)) for r in run.reports)
        + config.bots_per_process * len(run.failures),
        "errors": errors,
    }


def parse_args(argv: list[str] | None = None) -> MdtConfig:
    """The run the command line asks for."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--participants", type=int, default=12, help="room size (default 12)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (s)")
    parser.add_argument(
        "--bots-per-process", type=int, default=3, help="bots sharing a client process"
    )
    parser.add_argument("--video-size", default="320x240", help="published picture (WxH)")
    parser.add_argument(
        "--video-bitrate", type=int, default=300_000, help="published video bitrate (bps)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline node")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 3 participants, 3 s")
    args = parser.parse_args(argv)
    participants, seconds = args.participants, args.seconds
    if args.quick:
        participants, seconds = 3, 3.0
    if participants < 2:
        parser.error("a room needs two participants")
    if seconds <= 0 or args.bots_per_process < 1 or args.video_bitrate <= 0:
        parser.error("--seconds, --bots-per-process and --video-bitrate must be positive")
    return MdtConfig(
        participants=participants,
        seconds=seconds,
        bots_per_process=args.bots_per_process,
        video_size=args.video_size,
        video_bitrate=args.video_bitrate,
        baseline=not args.no_baseline,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure the room (then its baseline) and print the JSON line."""
    config = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="consilium-bench-mdt-"))
    started = time.monotonic()
    try:
        ours = run_room(config, workdir / "node", {})
        baseline = None
        if config.baseline:
            baseline = run_room(config, workdir / "baseline", BASELINE_SETTINGS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    line: dict[str, Any] = {
        "participants": config.participants,
        "seconds": round(ours.window_s, 1),
        "bots_per_process": config.bots_per_process,
        "client_processes": -(-config.participants // config.bots_per_process),
        "video_size": config.video_size,
        "video_bitrate": config.video_bitrate,
        **figures(config, ours),
    }
    if baseline is not None:
        line.update({f"baseline_{k}": v for k, v in figures(config, baseline).items()})
    else:
        line.update({f"baseline_{k}": None for k in figures(config, ours)})
    line["bench_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
