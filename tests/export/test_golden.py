"""cpp/tools/golden.py: the golden files that make the C++ runtime agree with Python.

The committed cpp/golden/ must equal a fresh write (floats compared to 1e-9 relative: FFT
rounding may differ across numpy builds); the C++ side (cpp/ci.sh: CMake + ctest) must pass on
them and on a real export, where cmake and g++ exist.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "cpp" / "golden"
REGENERATE = "regenerate with: python cpp/tools/golden.py cpp/golden (after a deliberate change)"


def golden_tool():
    """cpp/tools/golden.py (a tool of the C++ tests, outside the shipped package) as a module."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("omnisift_cpp_golden", REPO / "cpp" / "tools" / "golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return golden_tool().write_golden(tmp_path_factory.mktemp("golden") / "golden")


def _same(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_committed_golden_is_fresh(fresh):
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(COMMITTED) == files(fresh), f"cpp/golden has other files than write_golden writes; {REGENERATE}"
    for name in files(fresh):
        new, old = fresh / name, COMMITTED / name
        if name.endswith(".json"):
            try:
                _same(json.loads(new.read_text()), json.loads(old.read_text()), name)
            except AssertionError as exc:
                raise AssertionError(f"cpp/golden/{name} is stale ({exc}); {REGENERATE}") from None
        elif name.startswith("embeddings_"):            # real safetensors: compare the tensors
            from safetensors.numpy import load_file

            a, b = load_file(str(new)), load_file(str(old))
            assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"cpp/golden/{name} is stale; {REGENERATE}"
        else:
            assert new.read_bytes() == old.read_bytes(), f"cpp/golden/{name} is stale; {REGENERATE}"


def test_golden_covers_the_cases(fresh):
    from omnisift_edge.artifact.manifest import read_manifest

    layouts = json.loads((fresh / "layouts.json").read_text())
    assert any(c["n_grids"] % 2 and c["n_audio"] % 50 for c in layouts)             # odd frames, short last audio
    assert any(len(c["chunks"]) > -(-c["n_grids"] // 2) for c in layouts)          # audio-only tail chunks
    assert any(len(c["chunks"]) > -(-c["n_audio"] // 50) for c in layouts)         # video-only tail chunks
    tok = json.loads((fresh / "tokenizer_cases.json").read_text())
    texts = [c["text"] for c in tok["bpe"]["encode"]]
    assert any("<|im_start|>" in t for t in texts) and any(ord(ch) > 0xFFFF for t in texts for ch in t)
    assert any(c["ids_split_special"] != c["ids"] for c in tok["bpe"]["encode"])   # control tokens as text differ
    prompts = json.loads((fresh / "prompt_cases.json").read_text())["bpe"]
    assert any("<|im_start|>" in c["question"] and c["suffix_ids"].count(151644) == 1 for c in prompts)   # the template's only
    assert any("  " in t for t in texts) and any(ch.isdigit() for t in texts for ch in t)
    merges = json.loads((fresh / "tokenizer_bpe" / "tokenizer.json").read_text())["model"]["merges"]
    assert len(merges) > 100                                               # a tokenizer WITH merges
    bpe, gpt2 = tok["bpe"]["encode"], tok["bpe_gpt2"]["encode"]
    assert any(a["ids"] != b["ids"] for a, b in zip(bpe, gpt2))            # the two split regexes differ
    schedule = {s["name"]: s for s in json.loads((fresh / "schedule.json").read_text())}
    assert len(schedule["media"]["chunk_inputs"]) == 3                     # 9 frames: the third chunk padded
    ops = lambda name: [c["op"] for c in schedule[name]["calls"]]  # noqa: E731
    decodes = [c for c in schedule["turns"]["calls"] if c["op"] == "decode"]
    assert not decodes[0]["logits"] and not decodes[1]["logits"]           # prompt and chunk prefills: no logits
    assert len(schedule["turns"]["answers"]) == 4 and schedule["turns"]["chunks"] > 4   # media after answers
    assert schedule["sliding"]["evicted_chunks"] > 0 and "rotate" not in ops("sliding")
    assert schedule["rebase"]["base"] > 0 and "rotate" in ops("rebase") and "drop" in ops("rebase")
    turns = json.loads((fresh / "layout_turns.json").read_text())
    assert all(sum(op[0] == "open_turn" for op in c["ops"]) >= 1 for c in turns)
    assert read_manifest(fresh / "export_mini")["builds"]                  # checksums verify, build record there


def _tool_reason() -> str | None:
    missing = [t for t in ("cmake", "g++") if shutil.which(t) is None]
    if missing:
        return f"needs {' and '.join(missing)} to build cpp/ (apt-get install cmake g++)"
    headers = ["/usr/include/nlohmann/json.hpp", "/usr/include/openssl/evp.h", "/usr/include/unicode/normalizer2.h"]
    if not all(Path(h).is_file() for h in headers) and os.geteuid() != 0 and shutil.which("sudo") is None:
        return "needs nlohmann-json3-dev, libssl-dev and libicu-dev, and no root or sudo to install them"
    return None


@pytest.mark.skipif(_tool_reason() is not None, reason=_tool_reason() or "")
def test_cpp_ci_passes(tmp_path, small_export):
    """cpp/ci.sh (CMake, g++, ctest) on the committed goldens and on a fresh real export (the C++ build
    runs here, once per CI run: .ci/run leaves it to this test)."""
    from omnisift_edge.model.prompt import build_prompt
    from omnisift_edge.model.tokenizer import load_tokenizer

    folder = small_export(ratios=(1.0, 0.25), resolution=(112, 84))
    tok = load_tokenizer(folder / "tokenizer")
    question = "Wer spricht hier? 東京 2026"
    pieces = build_prompt(tok, question)
    texts = ["Hello, world!", "naïve café 😀", "<|im_start|>user\n12 34<|im_end|>"]
    expect = {"question": question, "prefix_ids": list(pieces.prefix_ids), "suffix_ids": list(pieces.suffix_ids),
              "encode": [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts]}
    (tmp_path / "expect.json").write_text(json.dumps(expect, ensure_ascii=False))
    env = dict(os.environ, OMNISIFT_EXPORT_DIR=str(folder), OMNISIFT_EXPORT_EXPECT=str(tmp_path / "expect.json"))
    run = subprocess.run(["bash", str(REPO / "cpp" / "ci.sh")], env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"cpp/ci.sh failed (exit {run.returncode}):\n{out[-6000:]}"
    assert "100% tests passed" in out and "real_export (Skipped)" not in out, out[-3000:]
