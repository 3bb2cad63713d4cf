"""Smoke test of the recording benchmark: it runs and prints its JSON contract.

No timing assertions: machines are noisy; this only checks the bench works and keeps its keys.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import REPO

POSITIVE_KEYS = (
    "cipher_mb_s",
    "raw_aesgcm_mb_s",
    "cipher_ratio",
    "seek_ttfb_ms_1min",
    "seek_ttfb_ms_1h",
    "record_cpu_s_per_s",
)
"""Contract keys: positive numbers in any run."""


def test_quick_recording_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/recording.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])

    for key in POSITIVE_KEYS:
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    assert line["record_dropped_records"] == 0  # the CPU figure is of every packet recorded
    ratio = line["cipher_mb_s"] / line["raw_aesgcm_mb_s"]
    assert abs(line["cipher_ratio"] - ratio) < 0.005
