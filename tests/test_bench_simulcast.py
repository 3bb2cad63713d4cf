"""Smoke test of the real-networks benchmark (bench/simulcast.py --quick): four simulcast bots,
three Chromium subscribers through coturn and impaired proxies, a layer switch, an ICE restart,
and the one-layer baseline room, in one run that prints its JSON contract.

No timing assertions (machines are noisy): it checks that the bench runs every part, that the
figures are there, and what must hold whatever the load: the constrained subscriber of the
simulcast room decodes the low layer (the baseline's only layer is the full one), and the ICE
restart brought media back without a rejoin, a lobby or a consent request."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.servers import REPO

FIGURES = ("fps_min", "fps_median", "freeze_share", "layer_share")
"""Per kind of subscriber (`constrained_`, `clean_`), in the room and the baseline."""


@pytest.mark.browser
def test_quick_simulcast_bench_prints_its_json_contract() -> None:
    result = subprocess.run(
        [sys.executable, "bench/simulcast.py", "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=420,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = json.loads(lines[0])
    for prefix in ("", "baseline_"):
        for kind in ("constrained", "clean"):
            assert all(f"{prefix}{kind}_{key}" in line for key in FIGURES), line
            assert line[f"{prefix}{kind}_fps_median"] is not None, line
        assert line[f"{prefix}node_cpu"] > 0, line
    # Simulcast: the 800 kbps subscriber decodes thumbnails (160 wide); before, the full layer.
    assert max(line["constrained_layer_share"], key=line["constrained_layer_share"].get) == "160"
    assert line["baseline_constrained_layer_share"].get("640", 0) > 0.5, line
    assert line["switch_s"] is not None and line["switch_layers_after"] is not None, line
    assert "switch_back_s" in line and "clean_top_layer_s" in line, line
    # Probing: the node sent probes, and every subscriber's first seconds were counted.
    assert line["probes"]["sent"] > 0, line
    assert set(line["join_dropped"]) == {"constrained", "clean_a", "clean_b", "dropping"}, line
    assert line["ice_restart_s"] is not None, line
    assert not line["ice_restart_rejoined"] and not line["ice_restart_lobby"], line
    assert not line["ice_restart_consent"], line
