"""`profile`: one run over several ratios writes JSON, Markdown and a PNG with sane numbers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.profiling.profile import ProfileConfig, profile  # noqa: E402
from omnisift_edge.runtime.session import SESSION_STAGES as STAGES  # noqa: E402


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(1.0, 0.5, 0.25), resolution=(112, 84))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_profile_writes_three_reports_with_consistent_numbers(folder, tmp_path, backend):
    report = profile(ProfileConfig(folder, backend=backend, seconds=6.0, max_new_tokens=3, out=tmp_path),
                     bar=False)
    data = json.loads((tmp_path / "profile.json").read_text())
    assert [r["ratio"] for r in data["ratios"]] == [1.0, 0.5, 0.25]
    kept = [r["tokens_kept"] for r in data["ratios"]]
    assert kept[0] == data["ratios"][0]["tokens_total"] and kept[0] > kept[1] > kept[2]
    kv = [r["kv_bytes"] for r in data["ratios"]]
    assert kv[0] > kv[1] > kv[2] > 0
    for r in data["ratios"]:
        assert set(r["stage_ms"]) == set(STAGES) and r["chunks"] == 3
        assert all(v["median"] > 0 and v["p90"] >= v["median"] for v in r["stage_ms"].values())
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["peak_host_mb"] > 0
        assert abs(r["real_time_factor"] - r["chunk_ms"]["median"] / 2000) < 1e-9
        assert "preprocess" in STAGES and len(r["chunk_curve_ms"]) == r["chunks"] == 3
        # the stages add up to the chunk time: what is left is bookkeeping (and, on a loaded machine, the
        # scheduler), a minor share; the log-mel and patches are a stage of their own
        assert 0 <= r["unaccounted_ms"] < 0.5 * r["chunk_ms"]["median"]
    assert all(line.endswith("fits") for line in data["config"]["context_check"])
    table = (tmp_path / "profile.md").read_text()
    assert table.count("\n| ") == 1 + 3 and "decoder.onnx" in table                 # header + one row per ratio
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.machine["backend"] == backend


def test_profile_command_and_bad_configs(folder, tmp_path):
    from tests.helpers import run_cli as _run

    result = _run("profile", str(folder), "--seconds", "4", "--ratios", "0.25", "--max-new-tokens", "2",
                  "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "| 0.25 |" in result.stdout and (tmp_path / "profile.png").is_file()
    with pytest.raises(UsageError, match="--seconds must cover"):
        ProfileConfig(folder, seconds=1.0)
    with pytest.raises(UsageError, match="ratios must be in"):
        ProfileConfig(folder, ratios=(0.0,))
    bad = _run("profile", str(folder), "--ratios", "0.3", "--seconds", "4")
    assert bad.returncode == 1 and "no compressor for ratio 0.3" in bad.stderr and "Traceback" not in bad.stderr


def test_profile_checks_the_context_before_measuring(folder, tmp_path):
    """A clip that cannot fit is refused in one line before any chunk runs; sliding profiles it."""
    from omnisift_edge.artifact.manifest import read_manifest
    from omnisift_edge.profiling.profile import context_check

    manifest = read_manifest(folder)
    cfg = ProfileConfig(folder, seconds=3600.0, max_new_tokens=3)
    with pytest.raises(UsageError, match=r"3600 s clip at ratio 1 needs \d+ tokens.*--seconds \d+ or less, or "
                                         "--context-policy sliding"):
        context_check(cfg, manifest, (1.0,))
    sliding = ProfileConfig(folder, seconds=3600.0, context_policy="sliding", window_seconds=20)
    assert "sliding window" in context_check(sliding, manifest, (1.0,))[0]
    with pytest.raises(UsageError, match="applies to --context-policy sliding"):
        ProfileConfig(folder, window_seconds=20)
    # a short sliding run: the window holds 2 chunks, so 4 of 6 are evicted and the KV cache stays small
    report = profile(ProfileConfig(folder, seconds=12.0, ratios=(1.0,), max_new_tokens=2, out=tmp_path,
                                   context_policy="sliding", window_seconds=4), bar=False)
    r = report.ratios[0]
    assert r["evicted_chunks"] == 4 and len(r["chunk_curve_ms"]) == 6
    assert r["kv_bytes"] < report.ratios[0]["tokens_kept"] * 1024 ** 2
