"""Smoke test of the simulcast forwarding benchmark: it runs and prints its JSON line. No timing
assertions (machines are noisy): it forwards in both modes and keeps its keys."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.fixtures.servers import REPO


def test_quick_layer_forwarding_bench_prints_its_json_line() -> None:
    result = subprocess.run(
        [sys.executable, "bench/layer_forwarding.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])
    for key in ("us_per_pkt", "baseline_us_per_pkt", "cost_ratio", "us_per_received_pkt",
                "baseline_us_per_received_pkt"):  # fmt: skip
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    assert math.isclose(
        line["cost_ratio"], line["us_per_pkt"] / line["baseline_us_per_pkt"], rel_tol=0.02
    )
    # Simulcast sends each subscriber one layer: fewer packets than the full stream to all.
    assert 0 < line["packets_sent"] < line["baseline_packets_sent"], line
