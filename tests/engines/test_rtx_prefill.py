"""A real TensorRT-RTX build (on this machine's CPU, ahead of time) with `--prefill-chunks 4`: the in-place
decoder engine's profile takes four chunks' kept tokens per call, and the build report says so in the
form the runtime reads (issue 25.3). Marked `rtx`: skipped with the reason where tensorrt_rtx is absent."""

from __future__ import annotations

import shutil

import pytest

from omnisift_edge.artifact.manifest import load_manifest, read_manifest
from omnisift_edge.engines.build import build_engines
from omnisift_edge.engines.plan import BuildConfig
from omnisift_edge.engines.profiles import kept_tokens

pytestmark = pytest.mark.rtx


def test_the_in_place_decoder_builds_with_a_four_chunk_prefill_profile(engine_export, tmp_path):
    import tensorrt_rtx as trt

    from omnisift_edge.runtime import trt_flavour as flavours
    from omnisift_edge.runtime.trt_pipeline import prefill_rows

    folder = tmp_path / "export"
    shutil.copytree(engine_export, folder)
    k_max = max(kept_tokens(read_manifest(folder)).values())
    artifact = build_engines(BuildConfig(folder, target="rtx", prefill_chunks=4, max_prompt=1))
    report = read_manifest(folder, verify=True)["builds"]["rtx"]              # engines checksummed too
    assert report["prefill_chunks"] == 4 and report["max_prefill_tokens"] == 4 * k_max
    (profile,) = report["engines"]["decoder_scatter"]["profiles"]
    assert profile["axes"]["sequence_length"][2] == 4 * k_max
    embeds = load_manifest(folder, verify=False).form_entry("decoder_scatter").input_names[0]
    assert profile["inputs"][embeds]["max"][1] == 4 * k_max and profile["inputs"][embeds]["min"][1] == 1   # [1, S, D]
    validity = flavours.engine_validity(trt, artifact.engines["decoder_scatter"].read_bytes())
    assert validity["checked"] and validity["header_ok"], validity
    build = load_manifest(folder, verify=False).builds["rtx"]                # the typed record the TRT stream reads
    assert build.prefill_chunks == 4 and prefill_rows(build) == 4 * k_max
