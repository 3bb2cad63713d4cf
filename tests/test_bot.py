"""`consilium bot`: headless participants against a real `consilium serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.fixtures.servers import REPO


def test_three_bots_see_and_hear_each_other(serve_process: Any) -> None:
    serve = serve_process(env={"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"})
    result = subprocess.run(
        [sys.executable, "-m", "consilium.cli", "bot", "--server", serve.url, "--room", "load",
         "--count", "3", "--seconds", "6", "--json", "--data-dir", str(serve.data_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bots"] == 3 and not report.get("errors"), report
    assert report["video_frames_decoded_min"] > 30, report
    assert report["frames_decoded"]["audio"] > 100, report
