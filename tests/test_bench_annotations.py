"""Smoke test of the annotation benchmark: it runs and prints its JSON contract.

No timing assertions: machines are noisy; this only checks the bench works and keeps its keys.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import REPO


def test_quick_annotations_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/annotations.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])
    assert line["participants"] == 2
    for key in ("latency_p95_ms", "ops_per_s", "handle_us_per_op", "video_fwd_pkts_per_s"):
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    assert line["errors"] == 0
    assert line["latency_samples"] > 0
