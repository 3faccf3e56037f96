"""Runtime stage: the streaming pipeline (encode, compress, prefill one 2-second chunk at a time;
then the question; then greedy decode) over an export's graphs, its engines, or the PyTorch model.

Entry: `run(RuntimeConfig) -> OmniSession` (= `session.open_session`). Backends: `ort_pipeline`
(ONNX Runtime), `trt_pipeline` (TensorRT), `torch_pipeline` (the reference); each reads the export
through `omnisift_edge.artifact.ExportFolder` and shares `stream.ChunkStream`, never each other.
"""

from __future__ import annotations


def run(cfg):
    """Open a streaming session on `cfg` (a `session.RuntimeConfig`)."""
    from omnisift_edge.runtime.session import open_session

    return open_session(cfg)
