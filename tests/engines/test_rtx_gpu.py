"""TensorRT-RTX engines running on an RTX-class GPU, against the recorded ONNX Runtime outputs.

Marked `gpu` and `rtx`, and skipped with the reason unless this machine's GPU is one TensorRT-RTX
compiles for (8.0, 8.6, 8.9, 12.0, 12.1: RTX 30/40/50, RTX PRO, A100 class; not Hopper, not Orin).
Written against TensorRT-RTX 1.7 and Polygraphy 0.53; not run yet (no such GPU in our sessions).
"""

from __future__ import annotations

import shutil

import pytest

from omnisift_edge.engines.build import build_engines
from omnisift_edge.runtime.trt_flavour import TENSORRT_RTX
from omnisift_edge.engines.plan import BuildConfig
from omnisift_edge.runtime.trt_env import detect_device
from omnisift_edge.engines.verify import VerifyConfig, verify_engines

pytestmark = [pytest.mark.gpu, pytest.mark.rtx]


@pytest.fixture(scope="module")
def device():
    found = detect_device()
    if found is None or not TENSORRT_RTX.supports(found.compute_capability):
        pytest.skip(f"needs a GPU TensorRT-RTX runs on (compute capability "
                    f"{', '.join(f'{a}.{b}' for a, b in TENSORRT_RTX.compute_capabilities)}); "
                    f"this machine has {found.name + ' (' + found.cc + ')' if found else 'none'}")
    return found


@pytest.fixture(scope="module")
def built(recorded_export, tmp_path_factory, device):
    folder = tmp_path_factory.mktemp("rtxgpu") / "export"
    shutil.copytree(recorded_export, folder)
    return folder, build_engines(BuildConfig(folder, target="rtx", compute_capabilities=device.cc))


def test_the_engines_match_onnx_runtime_ties_included(built, device):
    folder, artifact = built
    assert artifact.report["engines"]["decoder_scatter"]["validity"]["validity"] in ("VALID", "SUBOPTIMAL")
    report = verify_engines(VerifyConfig(folder, target="rtx"))
    assert report.ok, report.summary()
    assert set(report.graphs) == set(artifact.engines) - {"decoder_scatter"} and report.device == device.name
    for graph in ("compressor_r1", "compressor_r0.25"):
        outputs = {o.name: o for o in report.graphs[graph].outputs}
        assert outputs["kept_index"].ok and outputs["kept_index"].max_abs == 0
    import tensorrt_rtx as trt                                        # the in-place decoder: presents alias pasts

    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(artifact.engines["decoder_scatter"].read_bytes())
    presents = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                if engine.get_tensor_name(i).startswith("present.")]
    assert presents and all(engine.get_aliased_input_tensor(p) == p.replace("present.", "past_key_values.")
                            for p in presents)


def test_the_streaming_runtime_answers_as_onnx_runtime_does(built):
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.session import OmniSession, RuntimeConfig
    from tests.helpers import session_answers as _answers
    RES = (112, 84)                       # the resolution of the shared small export

    folder, _ = built
    clip = synthetic_clip(5.0, *RES, seed=4)
    reference = _answers(OmniSession(RuntimeConfig(folder, backend="onnxruntime")), clip)
    assert _answers(OmniSession(RuntimeConfig(folder, backend="tensorrt", target="rtx")), clip) == reference
