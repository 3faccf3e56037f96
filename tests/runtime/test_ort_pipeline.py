"""OrtStream's two KV forms on one export: the in-place decoder_gqa and the copied past/present decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from omnisift_edge.artifact.folder import ExportFolder  # noqa: E402
from omnisift_edge.artifact.manifest import Manifest, read_manifest  # noqa: E402
from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.kv_buffers import OrtInPlaceCache, OrtPastPresentCache  # noqa: E402
from omnisift_edge.runtime.ort_pipeline import OrtStream  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402

RES = (112, 84)


@pytest.fixture(scope="module")
def folder(small_export):
    return small_export(ratios=(0.25,), resolution=RES)


def _export(folder, raw: dict) -> ExportFolder:
    return ExportFolder(folder, Manifest.from_dict(raw))


def _run(session, clip):
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(0, len(clip.frames), 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
    first = list(session.ask_ids("What happens?", max_new_tokens=6))
    second = list(session.ask_ids("And after that?", max_new_tokens=4))
    return first, second, [p.tolist() for p in session.stream.kept_positions], session.stream.kv_length()


def test_both_forms_give_the_same_stream(folder, monkeypatch):
    manifest = read_manifest(folder)
    assert manifest["kv_cache"]["decoder_gqa"]["kind"] == "shared_buffer"
    assert manifest["validation"]["decoder_gqa"]["ok"]
    clip = synthetic_clip(5.0, *RES, seed=4)
    results = {}
    for form in ("shared_buffer", "past_present"):
        original = OrtStream.__init__

        def init(self, *args, _form=form, **kwargs):
            original(self, *args, **{**kwargs, "kv_form": _form})

        monkeypatch.setattr(OrtStream, "__init__", init)
        session = OmniSession(RuntimeConfig(folder, backend="onnxruntime"))
        assert isinstance(session.stream.kv, OrtInPlaceCache) == (form == "shared_buffer")
        results[form] = _run(session, clip)
        monkeypatch.undo()
    assert results["shared_buffer"] == results["past_present"]
    assert results["shared_buffer"][3] > 0


def test_kv_form_choice(folder, tmp_path):
    manifest = read_manifest(folder)
    with pytest.raises(UsageError, match="kv_form must be"):
        OrtStream(_export(folder, manifest), 0.25, [1, 2], kv_form="paged")
    old = dict(manifest)
    del old["kv_cache"]                     # an export made before the in-place form
    stream = OrtStream(_export(folder, old), 0.25, [1, 2, 3])
    assert isinstance(stream.kv, OrtPastPresentCache)
    assert stream.kv_length() == next(iter(stream.kv.past.values())).shape[2] > 3
    with pytest.raises(UsageError, match="no in-place decoder"):
        OrtStream(_export(folder, old), 0.25, [1, 2], kv_form="shared_buffer")
    inplace = OrtStream(_export(folder, manifest), 0.25, [1, 2, 3], max_context=1024)
    assert inplace.kv.capacity == 1024 and inplace.kv_length() == stream.kv_length()
    assert all(a.shape[2] == 1024 for a in inplace.kv.arrays.values())       # allocated once, max context
    assert json.dumps(manifest["kv_cache"]["decoder"]["runtimes"]) == '["tensorrt"]'


def test_drop_and_rotate_hooks_on_the_shared_buffer(folder):
    manifest = read_manifest(folder)
    stream = OrtStream(_export(folder, manifest), 0.25, list(range(1, 21)))
    before = stream.kv.valid()
    length = stream.kv_length()
    stream._drop_kv(3, 8)
    assert stream.kv_length() == length - 5
    for old, new in zip(before, stream.kv.valid()):
        np.testing.assert_array_equal(new, np.delete(old, np.s_[3:8], axis=2))
    keys = [n for n in stream.kv.past_names if n.endswith(".key")]
    values = [n for n in stream.kv.past_names if n.endswith(".value")]
    kept = stream.kv.valid()
    stream._rotate_kv(100)
    turned = dict(zip(stream.kv.past_names, stream.kv.valid()))
    assert all(not np.allclose(turned[n], k) for n, k in zip(stream.kv.past_names, kept) if n in keys)
    assert all(np.array_equal(turned[n], k) for n, k in zip(stream.kv.past_names, kept) if n in values)
    stream._rotate_kv(-100)                 # and back
    for n, k in zip(stream.kv.past_names, kept):
        np.testing.assert_allclose(stream.kv.valid([n])[0], k, atol=1e-5)
    buffers = {n: a.ctypes.data for n, a in stream.kv.arrays.items()}
    stream.kv.reset()                       # empty, on the same (zeroed) buffers
    assert stream.kv_length() == 0 and not any(a.any() for a in stream.kv.arrays.values())
    assert {n: a.ctypes.data for n, a in stream.kv.arrays.items()} == buffers
