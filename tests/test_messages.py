"""Messages that say what is true, and range checks outside the export manifest (issue 26).

Each test names the case it covers; each failed before the fix (a misleading message, a traceback,
a silent fresh start, a warning, or a plan of nonsense) and holds now.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omnisift_edge.cli import main
from omnisift_edge.errors import UsageError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

SEVEN_B = Path(__file__).parent / "model" / "configs" / "qwen2_5_omni_7b.json"
ROOT = Path(__file__).parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def one_line_error(result, *needles: str, absent: tuple[str, ...] = ()) -> str:
    """Exit 1, one `Error:` line, no traceback; `needles` in it, `absent` not."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    for needle in absent:
        assert needle not in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def exported(small_export):
    return small_export(ratios=(1.0, 0.25), resolution=(112, 84))


@pytest.fixture()
def export_copy(exported, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(exported, target)
    return target


def test_zero_sample_rate_is_named_not_blamed_on_the_clip(export_copy, tmp_path):
    path = export_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["layout"]["sample_rate"] = 0
    path.write_text(json.dumps(manifest))
    result = invoke("profile", export_copy, "--seconds", "4", "--ratios", "1", "-o", tmp_path / "p")
    one_line_error(result, "layout.sample_rate is 0", "export again", absent=("chunk",))


def test_unknown_engine_target_does_not_suggest_building_it(exported):
    result = invoke("run", exported, "--video", "clip.mp4", "--question", "hi", "--backend", "tensorrt",
                    "--target", "bogus")
    one_line_error(result, "unknown --target 'bogus'", "orin-nx", absent=("build --target bogus",))
    one_line_error(invoke("verify", exported, "--target", "bogus"), "unknown --target 'bogus'")


def test_build_context_beyond_the_model_suggests_what_export_takes(exported):
    result = invoke("build", exported, "--target", "rtx", "--plan", "--max-context", 10**12)
    one_line_error(result, "32768 positions", "--max-context 32768 or less", absent=(f"--max-context {10**12} (",))


@pytest.mark.parametrize("make_args,needle", [
    (lambda f, d: ("export", "--model", f, "-o", d / "out"), "is a file, not a model folder"),
    (lambda f, d: ("train", "--data", d, "-o", d / "out"), "is a folder; pass the JSONL file"),
    (lambda f, d: ("lint", f), "is a file; lint takes the export folder"),
])
def test_existing_paths_of_the_wrong_kind_are_not_said_to_be_missing(tmp_path, make_args, needle):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(invoke(*make_args(afile, tmp_path)), needle, absent=("does not exist", "no such"))


def test_doctor_does_not_promise_tensorrt_from_an_extra():
    from omnisift_edge.doctor import _install_hint, report

    assert "omnisift-edge[engines]" not in _install_hint(["tensorrt"], "engines")
    assert "python3-libnvinfer" in _install_hint(["tensorrt"], "engines")
    assert "omnisift-edge[engines]" in _install_hint(["tensorrt", "polygraphy"], "engines")   # polygraphy is in it
    line = next(x for x in report().splitlines() if "build / verify" in x)
    if "missing tensorrt)" in line or line.endswith("missing tensorrt (" + _install_hint(["tensorrt"], "engines") + ")"):
        assert "[engines]" not in line


def test_export_counts_every_onnx_file_it_wrote(exported):
    from omnisift_edge.artifact.manifest import load_manifest
    from omnisift_edge.export.config import ExportArtifact

    artifact = ExportArtifact(exported, load_manifest(exported, verify=False))
    assert sorted(artifact.onnx_files) == sorted(p.name for p in exported.glob("*.onnx"))


def test_one_max_context_rule_for_every_command(exported, tmp_path):
    from omnisift_edge.artifact.limits import MIN_CONTEXT
    from omnisift_edge.engines.memory import plan_config
    from omnisift_edge.engines.plan import BuildConfig
    from omnisift_edge.export.config import ExportConfig
    from omnisift_edge.runtime.session import RuntimeConfig

    makers = [lambda c: ExportConfig(out=tmp_path / "e", max_context=c), lambda c: BuildConfig(exported, max_context=c),
              lambda c: plan_config(SEVEN_B, max_context=c), lambda c: RuntimeConfig(exported, max_context=c)]
    for make in makers:
        with pytest.raises(UsageError, match=f"--max-context must be at least {MIN_CONTEXT} tokens"):
            make(MIN_CONTEXT - 1)
        make(MIN_CONTEXT)                                  # the same smallest value passes everywhere


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"video": "missing.mp4", "question": "Q?", "answer": "A"}) + "\n")
    out = tmp_path / "out"
    result = invoke("train", "--data", data, "-o", out, "--resume", "--no-progress", "--on-bad-line", "stop")
    assert "--resume: no checkpoint in" in result.output and "starting a new run from step 0" in result.output


def _cli(args, *, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter (warnings and file-size limits are per process)."""
    def limit():
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "omnisift_edge.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, preexec_fn=limit, timeout=600)


def test_tiny_model_prints_no_transformers_warning(tmp_path):
    result = _cli(["tiny-model", tmp_path / "m"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_tiny_model_on_a_full_disk_is_one_line_naming_the_file(tmp_path):
    result = _cli(["tiny-model", tmp_path / "m"], limit_bytes=1 << 20)   # a real EFBIG from the kernel
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and ".safetensors" in lines[0] and str(tmp_path / "m") in lines[0], result.stderr
    assert "free some space" in lines[0] and not (tmp_path / "m").exists()


def test_profile_fits_line_is_a_line_of_its_own(exported, tmp_path, capsys):
    from omnisift_edge.profiling.profile import ProfileConfig, profile

    profile(ProfileConfig(exported, ratios=(0.25,), seconds=4.0, max_new_tokens=2, out=tmp_path / "p"), bar=True)
    err = capsys.readouterr().err
    fits = [line for line in err.replace("\r", "\n").split("\n") if "fits" in line]
    assert fits and all(line.startswith("ratio 0.25:") for line in fits), err
    assert err.index("fits") < err.index("profiling")             # printed before the bar starts


def test_run_context_beyond_the_export_is_refused_before_allocating(exported):
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    with pytest.raises(UsageError, match="this export's graphs hold 8192 tokens"):
        OmniSession(RuntimeConfig(exported, ratio=1.0, max_context=10**12))


@pytest.mark.parametrize("args,needle", [
    (["--weights", "int4", "--block-size", "0"], "--block-size must be a whole number"),
    (["--block-size", "-4"], "--block-size must be a whole number"),
])
def test_plan_block_size_is_checked(args, needle):
    one_line_error(invoke("plan", SEVEN_B, *args), needle)


@pytest.mark.parametrize("key,value", [("num_attention_heads", -4), ("num_attention_heads", 0),
                                       ("hidden_size", "wide"), ("num_hidden_layers", -1)])
def test_plan_refuses_a_config_with_sizes_that_are_not_positive(tmp_path, key, value):
    config = json.loads(SEVEN_B.read_text())
    config["thinker_config"]["text_config"][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    one_line_error(invoke("plan", path), str(path), "check the config")


def test_ask_ids_max_new_tokens_must_be_whole(exported):
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig

    session = OmniSession(RuntimeConfig(exported, ratio=1.0))
    for bad in (2.5, 0, True, "3"):
        with pytest.raises(UsageError, match="max_new_tokens must be a whole number"):
            next(session.ask_ids("what happens?", max_new_tokens=bad))
