"""The TensorRT runtime backend: clear one-line errors without engines or TensorRT, profile choice,
and (where TensorRT and a GPU exist) the same kept positions and tokens as ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from tests.helpers import HostMemory as _HostMemory, session_answers as _answers  # noqa: E402
from omnisift_edge.runtime.trt_env import TENSORRT_MISSING  # noqa: E402
from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.artifact.manifest import write_manifest  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.session import BACKENDS, OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.runtime.trt_pipeline import choose_profile  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(0.25,), resolution=RES)


def _fake_build(src, dst, targets=("h100",), write_files=True, in_place=False):
    """A copy of the export with a `builds` section for `targets`; each placeholder engine file holds
    the name of the ONNX graph it stands for (the stand-in runner below runs that in ONNX Runtime).
    in_place: the build holds decoder_scatter instead of decoder, with the engines stage's one profile."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    c, s_max = manifest["max_context"], 512
    graphs = dict(manifest["graphs"])
    if in_place:
        graphs = {("decoder_scatter" if g == "decoder" else g): manifest["kv_cache"]["decoder_scatter"]["entry"]
                  if g == "decoder" else e for g, e in graphs.items()}
    builds = {}
    for target in targets:
        engines = {}
        for graph, entry in graphs.items():
            rel = f"engines/{target}/{graph}.engine"
            if write_files:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / rel).write_bytes(entry["file"].encode())
            profiles = [{"name": "static", "axes": {}, "inputs": {}}]
            if graph == "decoder":   # the order and ranges of engines/profiles.py
                profiles = [{"name": "prefill", "axes": {"sequence_length": [1, 64, s_max],
                                                        "past_sequence_length": [0, 100, c - s_max]}, "inputs": {}},
                            {"name": "decode", "axes": {"sequence_length": [1, 1, 1],
                                                       "past_sequence_length": [1, 300, c - 1]}, "inputs": {}}]
            engines[graph] = {"file": rel, "precision": "fp32", "profiles": profiles}
            if graph == "decoder_scatter":   # the order and ranges of engines/profiles.py's in_place profile
                engines[graph]["profiles"] = [{"name": "in_place", "axes": {
                    "sequence_length": [1, 64, s_max], "logits_length": [0, 1, 1], "cache_length": [c, c, c]},
                    "inputs": {}, "values": {"write_index": [0, 100, c - 1]}}]
                engines[graph]["static_axes"] = {"batch_size": 1, "cache_length": c}
        builds[target] = {"target": target, "tensorrt": "10.15.0" if in_place else "10.3.0", "device": "NVIDIA H100", "compute_capability": "9.0",
                          "max_context": manifest["max_context"], "engines": engines}
    write_manifest(dst, dict(manifest, builds=builds))
    return dst


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_tensorrt_is_a_backend():
    assert "tensorrt" in BACKENDS
    assert RuntimeConfig("x", backend="tensorrt", target="orin-agx").target == "orin-agx"


def test_no_engines_built_is_one_line(folder):
    with pytest.raises(UsageError, match="no engines built for this export; run omnisift-edge build") as exc:
        OmniSession(RuntimeConfig(folder, backend="tensorrt"))
    assert "--target" in _one_line(exc)


def test_tensorrt_missing_is_the_engines_stage_message(folder, tmp_path, monkeypatch):
    built = _fake_build(folder, tmp_path / "built")
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # `import tensorrt` raises ImportError
    with pytest.raises(UsageError) as exc:
        OmniSession(RuntimeConfig(built, backend="tensorrt"))
    assert _one_line(exc) == TENSORRT_MISSING


def test_target_choice_and_missing_files(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    two = _fake_build(folder, tmp_path / "two", targets=("h100", "orin-agx"))
    with pytest.raises(UsageError, match="has engines for h100, orin-agx; pick one") as exc:
        OmniSession(RuntimeConfig(two, backend="tensorrt"))
    _one_line(exc)
    with pytest.raises(UsageError, match=r"no engines for l4 \(it has h100, orin-agx\)"):
        OmniSession(RuntimeConfig(two, backend="tensorrt", target="l4"))
    with pytest.raises(UsageError, match=TENSORRT_MISSING.split(":")[0]):
        OmniSession(RuntimeConfig(two, backend="tensorrt", target="orin-agx"))
    gone = _fake_build(folder, tmp_path / "gone")
    (gone / "engines/h100/decoder.engine").unlink()
    manifest = json.loads((gone / "manifest.json").read_text())
    write_manifest(gone, manifest)                                 # checksums true again, the file still absent
    with pytest.raises(UsageError, match="engine file\\(s\\) missing: .*decoder.engine") as exc:
        OmniSession(RuntimeConfig(gone, backend="tensorrt"))
    _one_line(exc)


def test_profile_choice_follows_the_build_report():
    profiles = [("prefill", (1, 512), (0, 200)), ("decode", (1, 1), (1, 711))]
    assert choose_profile(profiles, 40, 0) == (0, 40)            # prefill on an empty cache
    assert choose_profile(profiles, 1, 0) == (0, 1)              # one token, empty cache: decode needs past >= 1
    assert choose_profile(profiles, 1, 150) == (1, 1)            # decode
    assert choose_profile(profiles, 600, 10) == (0, 512)         # longer than the profile: in pieces
    assert choose_profile(profiles, 30, 300) == (1, 1)           # late prefill: single decode steps
    reordered = [profiles[1], profiles[0]]                       # the order comes from the report, not assumed
    assert choose_profile(reordered, 1, 150) == (0, 1)
    assert choose_profile(reordered, 40, 0) == (1, 40)


class _OrtEngineRunner:
    """Stands in for Polygraphy's TrtRunner: runs the ONNX graph named in the placeholder engine."""

    log: list = []

    def __init__(self, engine, name=None, optimization_profile=None):
        import onnx

        from omnisift_edge.artifact.onnx_runtime import ort_session

        self.session, self.name, self.profile = ort_session(engine), name, optimization_profile
        # TensorRT aliases a KV_CACHE_UPDATE layer's output (a present) to its cache input (a past): so do we
        graph = onnx.load(str(engine), load_external_data=False).graph
        self.aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "TensorScatter"}

    def activate(self):
        self.log.append((self.name, "activate"))

    def deactivate(self):
        self.log.append((self.name, "deactivate"))

    def set_profile(self, index):
        self.profile = index
        self.log.append((self.name, "profile", index))

    def infer(self, feeds, copy_outputs_to_host=True):
        names = [o.name for o in self.session.get_outputs()]
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}   # HostMemory views -> plain arrays
        if self.name == "trt-decoder":
            n, past = feeds["inputs_embeds"].shape[1], next(v for k, v in feeds.items() if k.startswith("past")).shape[2]
            extra = (int(feeds["write_index"][0]), feeds["logits_index"].tolist()) if self.aliases else ()
            self.log.append((self.name, "run", self.profile, n, past, *extra))
        outputs = dict(zip(names, self.session.run(None, feeds)))
        for present, past in self.aliases.items():   # ONNX Runtime returns a copy: write it where TensorRT would
            np.copyto(feeds[past], outputs[present])
            outputs[present] = feeds[past]
        return outputs


def test_stream_through_stand_in_engines_matches_onnxruntime(folder, tmp_path, monkeypatch):
    """TrtStream's own logic (feeds, profile switching, KV fed back, outputs by name) with TensorRT, the GPU
    and the engines replaced by ONNX Runtime on the same graphs: the same positions and tokens."""
    import types

    import polygraphy.backend.trt as polygraphy_trt

    import omnisift_edge.runtime.trt_env as trt_env
    from omnisift_edge.runtime.trt_env import DeviceInfo

    built = _fake_build(folder, tmp_path / "built")
    monkeypatch.setattr(trt_env, "require_tensorrt", lambda *_: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA H100", (9, 0), 80.0))
    monkeypatch.setattr(polygraphy_trt, "EngineFromBytes", lambda data: lambda: str(built / data().decode()))
    monkeypatch.setattr(polygraphy_trt, "TrtRunner", _OrtEngineRunner)
    from omnisift_edge.runtime import trt_kv

    monkeypatch.setattr(trt_kv, "CudaMemory", _HostMemory)
    _HostMemory.allocated = []
    _OrtEngineRunner.log = []
    clip = synthetic_clip(5.0, *RES, seed=4)
    reference = _answers(OmniSession(RuntimeConfig(built, backend="onnxruntime")), clip)
    session = OmniSession(RuntimeConfig(built, backend="tensorrt"))
    assert _answers(session, clip) == reference
    runs = [e[2:] for e in _OrtEngineRunner.log if e[:2] == ("trt-decoder", "run")]
    assert runs[0][0] == 0 and runs[0][2] == 0                       # prefix: prefill profile, empty past
    assert all(p == (0 if n > 1 else 1) for p, n, _ in runs[1:])     # chunks/questions prefill, answers decode
    assert {p for p, _, _ in runs} == {0, 1}
    d = session.stream.dims              # one buffer per past tensor, allocated once for the whole context
    assert _HostMemory.allocated == [session.stream.max_context * d.kv_heads * d.head_dim * 4] * (2 * d.num_layers)
    session.stream.close()
    assert sum(e[1] == "deactivate" for e in _OrtEngineRunner.log) == 4

    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA A100", (8, 0), 80.0))
    with pytest.raises(UsageError, match="were built with TensorRT 10.3.0 on NVIDIA H100") as exc:
        OmniSession(RuntimeConfig(built, backend="tensorrt"))
    _one_line(exc)


@pytest.mark.trt
def test_tensorrt_session_matches_onnxruntime(folder, tmp_path):
    from omnisift_edge.engines import BuildConfig, build_engines

    built = tmp_path / "built"
    shutil.copytree(folder, built)
    build_engines(BuildConfig(built, target="auto", precision="fp32"))
    clip = synthetic_clip(5.0, *RES, seed=4)
    reference = _answers(OmniSession(RuntimeConfig(built, backend="onnxruntime")), clip)
    session = OmniSession(RuntimeConfig(built, backend="tensorrt"))
    got = _answers(session, clip)
    assert got == reference
    assert all(r.seconds["prefill"] > 0 for r in session.reports)
    session.stream.close()
    assert np.isfinite(np.asarray(session.stream.question_logits)).all()


@pytest.mark.parametrize("in_place", [False, True], ids=["past_present", "in_place"])
def test_stand_in_engines_slide_and_rebase_like_onnxruntime(folder, tmp_path, monkeypatch, in_place):
    """TrtStream's _drop_kv/_rotate_kv on its device cache (either form): a sliding, re-based stream through
    the stand-in engines gives the logits and tokens of the onnxruntime backend under the same policy."""
    import types

    import polygraphy.backend.trt as polygraphy_trt

    import omnisift_edge.runtime.trt_env as trt_env
    from omnisift_edge.engines.presets import DeviceInfo

    built = _fake_build(folder, tmp_path / "built", in_place=in_place)
    version = "10.15.0" if in_place else "10.3.0"                # the in-place engine wants KVCacheUpdate
    monkeypatch.setattr(trt_env, "require_tensorrt", lambda *_: types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA H100", (9, 0), 80.0))
    monkeypatch.setattr(polygraphy_trt, "EngineFromBytes", lambda data: lambda: str(built / data().decode()))
    monkeypatch.setattr(polygraphy_trt, "TrtRunner", _OrtEngineRunner)
    from omnisift_edge.runtime import trt_kv

    monkeypatch.setattr(trt_kv, "CudaMemory", _HostMemory)     # the device cache's logic over host memory
    clip = synthetic_clip(12.0, *RES, seed=5)
    got = {}
    for backend in ("onnxruntime", "tensorrt"):
        session = OmniSession(RuntimeConfig(built, backend=backend, context_policy="sliding", window_seconds=4,
                                            position_limit=260, system_prompt="Be brief."))
        per_frame = int(session.spec.sample_rate / session.spec.fps)
        for j in range(0, len(clip.frames), 4):
            session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
        tokens = list(session.ask_ids("What now?", max_new_tokens=3))
        window = session.stream.window
        assert window.evicted_chunks == 4 and window.base > 0
        got[backend] = (tokens, session.stream.question_logits, session.stream.kv_length())
        if backend == "tensorrt":
            assert session.stream.in_place == in_place
    assert got["tensorrt"][0] == got["onnxruntime"][0] and got["tensorrt"][2] == got["onnxruntime"][2]
    np.testing.assert_allclose(got["tensorrt"][1], got["onnxruntime"][1], atol=1e-4)


def test_in_place_engine_stream_writes_the_cache_in_place(folder, tmp_path, monkeypatch):
    """A build with decoder_scatter: TrtStream binds its own buffers [1, kv, cache_length, hd] as the pasts
    (the presents alias them), feeds write_index = rows cached and logits_index (none on a chunk prefill),
    never copies a present, and answers as the onnxruntime backend does."""
    import types

    import polygraphy.backend.trt as polygraphy_trt

    import omnisift_edge.runtime.trt_env as trt_env
    from omnisift_edge.runtime.trt_env import DeviceInfo

    built = _fake_build(folder, tmp_path / "built", in_place=True)
    monkeypatch.setattr(trt_env, "require_tensorrt", lambda *_: types.SimpleNamespace(__version__="10.15.0"))
    monkeypatch.setattr(trt_env, "require_device", lambda: DeviceInfo("NVIDIA H100", (9, 0), 80.0))
    monkeypatch.setattr(polygraphy_trt, "EngineFromBytes", lambda data: lambda: str(built / data().decode()))
    monkeypatch.setattr(polygraphy_trt, "TrtRunner", _OrtEngineRunner)
    from omnisift_edge.runtime import trt_kv

    class CountingMemory(_HostMemory):
        copies = 0

        def copy_in(self, buffer, source, nbytes):
            CountingMemory.copies += 1
            super().copy_in(buffer, source, nbytes)

    monkeypatch.setattr(trt_kv, "CudaMemory", CountingMemory)
    _HostMemory.allocated = []
    _OrtEngineRunner.log = []
    clip = synthetic_clip(5.0, *RES, seed=4)
    reference = _answers(OmniSession(RuntimeConfig(built, backend="onnxruntime")), clip)
    session = OmniSession(RuntimeConfig(built, backend="tensorrt"))
    assert session.stream.in_place
    assert _answers(session, clip) == reference                  # kept positions, counts and tokens
    c, d = json.loads((built / "manifest.json").read_text())["max_context"], session.stream.dims
    runs = [e[2:] for e in _OrtEngineRunner.log if e[:2] == ("trt-decoder", "run")]
    assert {past for _, _, past, _, _ in runs} == {c}            # the whole static cache, every call
    assert {profile for profile, *_ in runs} == {None}           # one profile: never switched
    written = 0
    for _, n, _, write_index, logits_index in runs:              # rows cached so far, then the new ones
        assert write_index == written and logits_index in ([], [n - 1])
        written += n
    assert written == session.stream.kv_length()
    assert any(li == [] for *_, li in runs) and any(li != [] for *_, li in runs)   # chunk prefills: no logits
    assert [li for _, n, _, _, li in runs if n == 1] == [[0]] * sum(n == 1 for _, n, *_ in runs)   # decode: logits
    assert CountingMemory.copies == 0                            # no present is ever copied back
    assert _HostMemory.allocated == [c * d.kv_heads * d.head_dim * 4] * (2 * d.num_layers)
    session.stream.close()


@pytest.mark.trt
def test_tensorrt_in_place_engine_aliases_and_matches_onnxruntime(folder, tmp_path):
    """Where TensorRT >= 10.15 and a GPU exist: the build holds decoder_scatter, each present is aliased to its
    past in the engine, and a session on it answers as ONNX Runtime does."""
    import tensorrt as trt

    from omnisift_edge.engines import BuildConfig, build_engines

    if tuple(int(p) for p in trt.__version__.split(".")[:2]) < (10, 15):
        pytest.skip(f"TensorRT {trt.__version__} has no KVCacheUpdate layer (needs >= 10.15)")
    built = tmp_path / "built"
    shutil.copytree(folder, built)
    artifact = build_engines(BuildConfig(built, target="auto", precision="fp32", max_context=1024))
    assert set(artifact.engines) >= {"decoder_scatter"} and "decoder" not in artifact.engines
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(artifact.engines["decoder_scatter"].read_bytes())
    for i in range(2):
        for kind in ("key", "value"):
            assert engine.get_aliased_input_tensor(f"present.{i}.{kind}") == f"past_key_values.{i}.{kind}"
    clip = synthetic_clip(5.0, *RES, seed=4)
    reference = _answers(OmniSession(RuntimeConfig(built, backend="onnxruntime")), clip)
    session = OmniSession(RuntimeConfig(built, backend="tensorrt"))
    assert session.stream.in_place and _answers(session, clip) == reference
    session.stream.close()
