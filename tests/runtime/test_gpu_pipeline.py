"""The pipeline on a CUDA GPU keeps the same tokens as on the CPU (run where a GPU exists)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omnisift_edge.model.load import ModelSource, load_model  # noqa: E402
from omnisift_edge.model.prompt import build_prompt  # noqa: E402
from omnisift_edge.runtime.torch_pipeline import CompressionConfig, whole_clip_prefill  # noqa: E402

from .test_torch_pipeline import SIZE, _features, _stream  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("ratio", [1.0, 0.35, 0.25])
def test_gpu_stream_keeps_the_cpu_tokens_and_logits(tiny_model, ratio):
    gpu_model = load_model(ModelSource(device="cuda"))
    features = _features(tiny_model, 6.5, seed=5)
    pieces = build_prompt(tiny_model.tokenizer, "What do you hear?")
    compression = CompressionConfig.for_ratio(ratio, tiny_model.spec.tokens_per_frame(*SIZE))
    cpu = _stream(tiny_model, features, pieces.prefix_ids, compression)
    gpu = _stream(gpu_model, features, pieces.prefix_ids, compression)
    for a, b in zip(cpu.kept_positions, gpu.kept_positions):
        np.testing.assert_array_equal(a, b)
    cpu_tokens = list(cpu.ask(pieces.suffix_ids, max_new_tokens=5))
    gpu_tokens = list(gpu.ask(pieces.suffix_ids, max_new_tokens=5))
    torch.testing.assert_close(gpu.question_logits.cpu(), cpu.question_logits, rtol=1e-3, atol=1e-3)
    assert gpu_tokens == cpu_tokens


def test_gpu_whole_clip_equals_gpu_stream(tiny_model):
    gpu_model = load_model(ModelSource(device="cuda"))
    features = _features(tiny_model, 5.0, seed=6)
    pieces = build_prompt(tiny_model.tokenizer, "Describe it.")
    compression = CompressionConfig.for_ratio(0.25, tiny_model.spec.tokens_per_frame(*SIZE))
    whole = whole_clip_prefill(gpu_model, features, pieces.prefix_ids, pieces.suffix_ids, compression)
    stream = _stream(gpu_model, features, pieces.prefix_ids, compression)
    list(stream.ask(pieces.suffix_ids, max_new_tokens=1))
    assert stream.kv_length() - 1 == whole.cache.get_seq_length()
    torch.testing.assert_close(stream.question_logits, whole.last_logits, rtol=1e-3, atol=1e-3)
