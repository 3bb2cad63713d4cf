"""Smoke test of the signalling benchmark: it runs and prints its JSON contract.

No timing assertions: machines are noisy; this only checks the bench works and keeps its keys.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import REPO

QUICK_PARTICIPANTS = 200
"""The participant target of `bench/signaling.py --quick`."""


def test_quick_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/signaling.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])

    # The contract other tools read.
    assert isinstance(line["joins_per_s"], float) and line["joins_per_s"] > 0
    assert isinstance(line["join_latency_p95_ms"], float) and line["join_latency_p95_ms"] > 0
    assert line["idle_participants"] == QUICK_PARTICIPANTS
    assert isinstance(line["kib_per_participant"], float) and line["kib_per_participant"] > 0
    assert line["failed_joins"] == 0, line["failures"]

    # The baseline, measured side by side in the same run.
    assert line["baseline_idle_participants"] == QUICK_PARTICIPANTS
    assert line["baseline_failed_joins"] == 0, line["baseline_failures"]
    for key in (
        "baseline_kib_per_participant",
        "baseline_join_latency_p95_ms",
        "overhead_kib_per_participant",
    ):
        assert isinstance(line[key], float), (key, line[key])
    assert line["overhead_kib_per_participant"] == round(
        line["kib_per_participant"] - line["baseline_kib_per_participant"], 2
    )
