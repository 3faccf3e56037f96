"""Real-size export cost: a 3B-width export with one layer per stack (slow), and the plan's host-memory line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "model" / "configs"


def test_plan_prints_the_export_host_memory_from_the_measured_fit():
    from click.testing import CliRunner

    from omnisift_edge.cli import main
    from omnisift_edge.engines.host_memory import export_peak_bytes, thinker_bytes
    from omnisift_edge.engines.memory import read_config

    small, big = (read_config(CONFIGS / f"qwen2_5_omni_{s}.json") for s in ("3b", "7b"))
    assert thinker_bytes(big) > thinker_bytes(small) > 8 * 2**30            # fp16: ~8.8 GB and ~16.6 GB
    assert export_peak_bytes(big) > export_peak_bytes(small) > thinker_bytes(small)
    result = CliRunner().invoke(main, ["plan", str(CONFIGS / "qwen2_5_omni_7b.json")])
    assert result.exit_code == 0 and "host memory: export --dtype fp16 needs about" in result.output


@pytest.mark.slow
def test_a_3b_width_export_with_one_layer_and_its_peak(tmp_path):
    """Minutes and ~7 GB of RAM: random weights at the real 3B widths, 1 layer per stack."""
    pytest.importorskip("optimum.exporters.onnx")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.export_cost import run_export, thinker_config, write_folder

    weights = write_folder(tmp_path / "model", thinker_config("3b", 1))
    seconds, peak = run_export(tmp_path / "model", tmp_path / "out", "fp16", "fp16")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    shape = manifest["thinker_shape"]["text"]
    assert (shape["hidden"], shape["vocab"], shape["layers"]) == (2048, 151936, 1)
    assert peak < 5.5 * weights       # measured 4.37x (docs/benchmarks.md); the 1.5x + 2 GB goal is not met yet
