"""Streaming OmniSIFT through the TensorRT engines of one build (Polygraphy's `TrtRunner`, numpy I/O).

The same loop as `OrtStream` (`runtime.exported.ExportedStream`): the engines built by the engines
stage (`omnisift-edge build DIR --target ...`, docs/engines.md) from the same ONNX graphs, found
through the manifest's `builds.<target>` report. Vision, audio and compressor engines have static
shapes (one profile). The in-place decoder engine (`decoder_scatter`) has one profile; the
past/present one (`decoder`, TensorRT 10.3) has the build's profiles (0 prefill, 1 decode: read from
`builds.<target>.engines.decoder.profiles`, not assumed), and each call picks the one whose
`sequence_length` / `past_sequence_length` ranges hold it.

The KV cache stays on the device between calls; only the logits come to the host. Two forms,
whichever the build holds (engines/kv_form.py):
- `decoder_scatter` (TensorRT-RTX, TensorRT >= 10.15): `trt_kv.StaticDeviceKV`, one buffer per layer
  and kind [1, kv, cache_length, hd] bound as the past input; TensorRT aliases the present output to
  it (Polygraphy's TrtRunner binds an aliased output to its input's address), so the engine writes
  the new rows at `write_index` in place and nothing is copied. One profile: no switching.
- `decoder` (TensorRT 10.3 / JetPack 6): `trt_kv.DeviceKV`, packed buffers fed as past; the presents
  are copied device-to-device back into them after each call.
TensorRT and Polygraphy are imported when a stream opens, never at module import.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.folder import ExportFolder
from omnisift_edge.errors import UsageError, require
from omnisift_edge.artifact.manifest import DECODER, DECODER_SCATTER, Build
from omnisift_edge.runtime.exported import ExportedStream, rope_freqs
from omnisift_edge.runtime.stream import ContextFullError


SCATTER = DECODER_SCATTER     # the in-place decoder's engine key in a build report


def scatter_limits(build: Build) -> tuple[int, int]:
    """(longest call, cache rows) of the in-place decoder engine, from its build report."""
    entry = build.engines[SCATTER]
    profile = entry.profiles[0] if entry.profiles else {}
    seq, cache = profile.get("axes", {}).get("sequence_length"), (entry.static_axes or {}).get("cache_length")
    if seq is None or cache is None:
        raise UsageError("the decoder_scatter engine's build report has no sequence_length range or cache_length; "
                         "rebuild the engines with this omnisift-edge")
    return int(seq[2]), int(cache)


def prefill_rows(build: Build) -> int:
    """The most rows one decoder call of this build takes (its prefill profile's sequence_length max, as
    `build --prefill-chunks` sized it): a grouped prefill holds no more chunks than fit."""
    if SCATTER in build.engines:
        return scatter_limits(build)[0]
    return max(seq[1] for _, seq, _ in decoder_profiles(build))


def decoder_profiles(build: Build) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """The decoder engine's profiles in build order: (name, (min, max) sequence_length, (min, max) past)."""
    found = []
    for profile in build.engines[DECODER].profiles:
        axes = profile.get("axes", {})
        seq, past = axes.get("sequence_length"), axes.get("past_sequence_length")
        if seq is None or past is None:
            raise UsageError("the decoder engine's build report has no sequence_length / past_sequence_length ranges; "
                             "rebuild the engines with this omnisift-edge")
        found.append((profile["name"], (int(seq[0]), int(seq[2])), (int(past[0]), int(past[2]))))
    return found


def choose_profile(profiles, n: int, past: int) -> tuple[int, int]:
    """(profile index, tokens to feed now) for `n` new tokens after `past` cached ones.

    One token prefers a decode profile (sequence_length 1..1); more tokens take the profile that
    holds the most of them. A prefill longer than its profile's max, or one late in the context
    (past beyond the prefill profile's range), is fed in pieces, down to single decode steps.
    """
    best = None
    for index, (_, (s_lo, s_hi), (p_lo, p_hi)) in enumerate(profiles):
        if not (p_lo <= past <= p_hi and s_lo <= 1 <= s_hi):
            continue
        take = min(n, s_hi)
        score = (take, n == 1 and s_hi == 1)          # most tokens at once; for one token, the decode profile
        if best is None or score > best[0]:
            best = (score, index, take)
    if best is None:
        raise ContextFullError(f"no decoder profile of these engines holds {past} cached tokens; "
                               "rebuild the engines with a larger --max-context")
    return best[1], best[2]


def open_runners(files: dict, folder, target: str) -> dict:
    """role -> an activated Polygraphy TrtRunner of the engine at files[role]; the ones opened are released on error."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    runners = {}
    try:
        for role, path in files.items():
            engine = EngineFromBytes(BytesFromPath(str(path)))()
            if engine is None:
                raise UsageError(f"TensorRT could not load {path}; rebuild: omnisift-edge build {folder} --target {target}")
            runner = TrtRunner(engine, name=f"trt-{role}")
            runner.activate()
            runners[role] = runner
    except BaseException:
        for runner in runners.values():
            runner.deactivate()
        raise
    return runners


class TrtStream(ExportedStream):
    """Push whole 2-second chunks (pixel patches, log-mel window), then ask questions."""

    def __init__(self, export: ExportFolder, ratio: float | None, prefix_ids: Sequence[int], *,
                 target: str | None = None, max_context: int | None = None, context=None):
        from omnisift_edge.runtime.trt_env import check_compatible, require_device_for, require_tensorrt

        self.folder = export.path
        self.target, self.build = export.build(target)
        graphs = export.graphs_for(ratio)
        engines = self.build.engines
        self.in_place = SCATTER in engines
        files = {}
        for role, graph in graphs.items():
            key = SCATTER if role == "decoder" and self.in_place else graph.key
            if key not in engines:
                raise UsageError(f"the {self.target} build has no {key} engine; rebuild: "
                                 f"omnisift-edge build {self.folder} --target {self.target}")
            files[role] = self.folder / engines[key].file
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise UsageError(f"engine file(s) missing: {', '.join(missing)}; copy the whole folder or rebuild: "
                             f"omnisift-edge build {self.folder} --target {self.target}")
        trt = require_tensorrt(self.build.flavour)   # the build's flavour: tensorrt | tensorrt_rtx
        require("polygraphy", extra="engines")
        device = require_device_for(self.build)
        check_compatible(self.build, str(trt.__version__), device, self.folder)
        self.profiles = [] if self.in_place else decoder_profiles(self.build)
        self._profile: int | None = None
        self.runners = {}
        try:
            self.runners = self._open_runners(files)
        except BaseException:
            self.close()
            raise

        limit = self.build.max_context or export.manifest.max_context   # the engines' profiles end there
        kv = self._open_cache(export, ratio, limit)
        max_context = min(max_context or kv.capacity, kv.capacity)
        super().__init__(export, ratio, prefix_ids, what="the engines", kv=kv, max_context=max_context, context=context)
        self.max_prefill_rows = prefill_rows(self.build)   # a grouped prefill: as many chunks as one call takes

    def _open_runners(self, files: dict) -> dict:
        """role -> an activated Polygraphy TrtRunner of the engine at files[role] (a stream pool shares one set)."""
        return open_runners(files, self.folder, self.target)

    def _open_cache(self, export: ExportFolder, ratio: float | None, limit: int):
        """The decoder's device cache: in place ([1, kv, cache_length, hd] per past, the engine's static axis)
        or packed ([1, kv, max_context, hd] per past); names from the manifest's entries."""
        from omnisift_edge.runtime import trt_kv

        dims = export.manifest.dims
        shape = dict(kv_heads=dims.kv_heads, head_dim=dims.head_dim, float_type=export.float_type,
                     inv_freq=rope_freqs(export))
        if self.in_place:
            entry = export.manifest.form_entry(SCATTER)
            self.scatter_inputs = entry.input_names[:4]   # embeds, positions, write_index, logits_index
            self.max_call, limit = scatter_limits(self.build)
            self.kv = self._new_cache(trt_kv.StaticDeviceKV, entry.input_names[4:], entry.output_names[1:], limit, shape)
        else:
            decoder = export.graphs_for(ratio)["decoder"]
            self.kv = self._new_cache(trt_kv.DeviceKV, decoder.input_names[3:], decoder.output_names[1:], limit, shape)
        return self.kv     # held before the stream's constructor runs: close() frees it if that fails

    def _new_cache(self, kind, past_names, present_names, capacity: int, shape: dict):
        """The stream's own device cache of `kind` (a stream pool's streams take a slot of its buffers instead)."""
        return kind(past_names, present_names, capacity=capacity, **shape)

    def close(self) -> None:
        """Release the engines' execution contexts and device buffers."""
        for runner in getattr(self, "runners", {}).values():
            try:
                runner.deactivate()
            except Exception:
                pass
        self.runners = {}
        if getattr(self, "kv", None) is not None:
            self.kv.close()
            self.kv = None

    def __del__(self):
        self.close()

    @staticmethod
    def _run(runner, feeds: dict) -> dict:
        # Polygraphy reuses its host output buffers between calls: copy what we keep
        return {name: np.array(value) for name, value in runner.infer(feeds).items()}

    def _step(self, embeds, positions, want_logits=True):
        if self.in_place:
            return self._step_in_place(embeds, positions, want_logits)
        n, start, logits = embeds.shape[1], 0, None
        runner = self.runners["decoder"]
        while start < n:
            index, take = choose_profile(self.profiles, n - start, self.kv_length())
            if index != self._profile:
                runner.set_profile(index)
                self._profile = index
            piece = np.ascontiguousarray(embeds[:, start:start + take])
            embeds_name, positions_name, mask_name = self.decoder_inputs
            feeds = {embeds_name: piece,
                     positions_name: np.ascontiguousarray(positions[:, start:start + take]).reshape(3, 1, take),
                     mask_name: np.ones((1, self.kv_length() + take), dtype=np.int64), **self.kv.bind()}
            out = runner.infer(feeds, copy_outputs_to_host=False)      # device views, the runner's buffers
            self.kv.append(take, out)                                   # presents -> our buffers, on the device
            logits = out[self.logits_name]
            start += take
        if not want_logits:
            return None
        return self.kv.memory.to_host(logits)[0, -1].astype(np.float32)                  # [V]

    def _step_in_place(self, embeds, positions, want_logits):
        """The in-place engine: pieces of at most the profile's longest call; write_index = rows cached,
        logits only for the last row of the last piece when asked (none on a chunk prefill)."""
        n, start, logits = embeds.shape[1], 0, None
        self.kv.reserve(n)
        runner = self.runners["decoder"]
        embeds_name, positions_name, write_name, logits_index_name = self.scatter_inputs
        while start < n:
            take = min(n - start, self.max_call)
            last = want_logits and start + take == n
            feeds = {embeds_name: np.ascontiguousarray(embeds[:, start:start + take]),
                     positions_name: np.ascontiguousarray(positions[:, start:start + take]).reshape(3, 1, take),
                     write_name: np.array([self.kv.length], dtype=np.int64),                        # [1], host
                     logits_index_name: np.array([take - 1] if last else [], dtype=np.int64),      # [L]
                     **self.kv.bind()}                                                              # [1, kv, M, hd]
            out = runner.infer(feeds, copy_outputs_to_host=False)     # presents: our buffers, written in place
            self.kv.append(take, out)
            logits = out[self.logits_name] if last else None
            start += take
        if logits is None:
            return None
        return self.kv.memory.to_host(logits)[0, -1].astype(np.float32)                  # [V]

    def _encode_video(self, pixel_values, n_grids):
        g = self.graphs["vision_encoder"]
        out = self._run(self.runners["vision_encoder"], {g.inputs[0].name: self.video_feed(pixel_values, n_grids)})
        return out[g.outputs[0].name][:n_grids * self.tokens_per_frame]             # [n_grids*n_p, D]

    def _encode_audio(self, mel):
        g = self.graphs["audio_encoder"]
        feeds, tokens = self.audio_feeds(mel)
        return self._run(self.runners["audio_encoder"], feeds)[g.outputs[0].name][:tokens]   # [La, D]

    def _compress(self, video, audio, n_grids, chunk_positions):
        names = self.graphs["compressor"].output_names
        out = self._run(self.runners["compressor"], self.compressor_feeds(video, audio, n_grids, chunk_positions))
        kept, index = out[names[0]], out[names[2]][0].astype(np.int64)
        if len(names) > 3:                                                          # the real rows first
            count = int(np.asarray(out[names[3]]).reshape(-1)[0])
            kept, index = kept[:, :count], index[:count]
        return kept, index
