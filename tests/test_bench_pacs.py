"""Smoke test of the PACS share benchmark: it runs against a real Orthanc and prints its JSON
contract. No timing assertions: machines are noisy; this only checks the bench works."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.servers import REPO


def test_quick_pacs_share_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/pacs_share.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])
    assert line["slices"] == 10
    for key in ("first_slice_s", "all_slices_s", "node_peak_rss_mb", "baseline_first_slice_s",
                "baseline_all_slices_s", "baseline_node_peak_rss_mb"):  # fmt: skip
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line[key])
    assert line["first_slice_s"] <= line["all_slices_s"]
    # The series is one stacked image, announced a few times rather than once per slice.
    assert line["pacs_images"] == 1
    assert 1 <= line["image_updates"] <= 10 and line["progress_messages"] >= 2
