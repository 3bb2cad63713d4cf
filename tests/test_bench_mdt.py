"""Smoke test of the MDT benchmark: a small room runs through it and it prints its JSON contract.

No timing assertions: machines are noisy; this only checks the bench works, measures the room
and its baseline in the same run, and keeps its keys.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import REPO

QUICK_PARTICIPANTS = 3
"""The room size of `bench/mdt.py --quick`."""

FIGURES = (
    "fps_min",
    "fps_median",
    "loss",
    "packets_expected",
    "packets_received",
    "freezes",
    "freeze_share",
    "node_cpu",
    "client_cpu",
    "retransmitted_ratio",
    "late_dropped_packets",
    "queue_delay_p95_ms",
)
"""Keys measured for the room, and again as `baseline_<key>` for the baseline node."""


def test_quick_mdt_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/mdt.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])

    assert line["participants"] == QUICK_PARTICIPANTS and line["seconds"] > 0
    assert line["client_processes"] * line["bots_per_process"] >= QUICK_PARTICIPANTS
    for prefix in ("", "baseline_"):  # the line in full when a check fails
        assert all(f"{prefix}{key}" in line for key in FIGURES), line
        assert line[f"{prefix}failed_bots"] == 0, line
        # Every participant received every other's video, and media flowed through the node.
        subscriptions = QUICK_PARTICIPANTS * (QUICK_PARTICIPANTS - 1)
        assert line[f"{prefix}video_subscriptions"] == subscriptions, line
        assert line[f"{prefix}fps_median"] > 0 and line[f"{prefix}packets_received"] > 0, line
        assert 0 <= line[f"{prefix}loss"] <= 1, line
        assert line[f"{prefix}node_cpu"] > 0, line
