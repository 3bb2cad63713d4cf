"""Smoke test of the forwarding benchmark: it runs and prints its JSON contract.

No timing assertions: machines are noisy; this only checks the bench works, measures both servers
and keeps its keys.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

from tests.fixtures.servers import REPO

QUICK_PARTICIPANTS = 2
"""The room size of `bench/forwarding.py --quick`."""

POSITIVE_KEYS = (
    "us_per_pkt",
    "us_per_frame",
    "baseline_us_per_pkt",
    "baseline_us_per_frame",
    "ratio",
    "frame_ratio",
    "fwd_pkts_per_s",
    "cpu_s_per_s",
    "latency_p95_ms",
    "client_cpu_s_per_s",
)
"""Contract keys that are measurements, positive in any run that forwarded media."""

FRACTION_KEYS = ("loss", "baseline_loss")
"""Contract keys that are fractions of expected packets or frames."""


def test_quick_forwarding_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/forwarding.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])

    assert line["participants"] == QUICK_PARTICIPANTS
    for key in POSITIVE_KEYS:
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    for key in FRACTION_KEYS:
        assert isinstance(line[key], int | float) and 0 <= line[key] <= 1, (key, line[key])
    assert line["loss"] < 0.5, line

    # The ratios are what they say they are (up to the rounding of the printed values).
    assert math.isclose(
        line["ratio"], line["baseline_us_per_pkt"] / line["us_per_pkt"], rel_tol=0.02
    )
    assert math.isclose(
        line["frame_ratio"], line["baseline_us_per_frame"] / line["us_per_frame"], rel_tol=0.02
    )
    # The SFU under test forwarded without a codec, as the design requires.
    assert line["server_codecs_created"] == 0


def test_quick_forwarding_bench_measures_simulcast_publishers_too() -> None:
    """`--simulcast`: the same room once more with every camera in three layers, measured once
    the subscribers receive every camera's top layer (the same frames as the one-stream run);
    the cost per forwarded packet of both, and the median of the pairs' ratios."""
    result = subprocess.run(
        [sys.executable, "bench/forwarding.py", "--quick", "--simulcast", "--no-baseline",
         "--rounds", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    line = json.loads(result.stdout.splitlines()[-1])
    assert line["simulcast_warmed_up"], line
    for key in ("simulcast_us_per_pkt", "simulcast_fwd_pkts_per_s", "simulcast_fwd_frames_per_s"):
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    # The subscribers climbed to the top layer (transport-cc feedback and render sizes, as a
    # browser's) and the window counted it.
    assert line["simulcast_top_layer_share"] > 0.5, line
    assert len(line["simulcast_top_layer_shares"]) == len(line["simulcast_cost_ratios"]) == 2
    assert math.isclose(
        line["simulcast_cost_ratios"][0], line["simulcast_us_per_pkt"] / line["us_per_pkt"],
        rel_tol=0.02,
    )  # fmt: skip
    assert math.isclose(
        line["simulcast_cost_ratio"], statistics.median(line["simulcast_cost_ratios"]),
        rel_tol=0.01,
    )  # fmt: skip
    assert line["baseline_us_per_pkt"] is None, "--no-baseline"
