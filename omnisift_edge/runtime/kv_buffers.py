"""The ONNX Runtime stream's KV caches (runtime/kv_cache.py's protocol), and the numpy edits they share.

`OrtInPlaceCache` drives `decoder_gqa.onnx` (see `artifact.tensors.decoder_gqa_graph`): one buffer
[1, kv_heads, capacity, head_dim] per layer and kind, wrapped in an OrtValue once and bound with
IOBinding as both the past input and the present output, so ONNX Runtime's GroupQueryAttention
writes only the new rows and attends over the valid rows; a call never copies the cache. On the CPU
the OrtValues wrap numpy arrays (no copy), so `drop` (compaction) and `rotate` (RoPE re-basing) work
on the same memory in place; on another device they round-trip through the host (rare operations).

`OrtPastPresentCache` drives `decoder.onnx` (exports before the in-place form): the packed past
[1, kv_heads, length, head_dim] goes in, the presents (one row longer per token) come back.

Tensor names come from `artifact.tensors`, shapes and rope settings from the manifest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.artifact.tensors import decoder_graph, decoder_gqa_graph
from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime.context import drop_tokens
from omnisift_edge.runtime.context import inv_freq as inverse_frequencies
from omnisift_edge.runtime.context import rotate_keys as rotated_keys
from omnisift_edge.runtime.kv_cache import KVCache, key_names


def rotate_keys(keys: np.ndarray, delta: int, inv_freq: np.ndarray) -> None:
    """Re-base cached keys [..., n, hd] by -delta positions in place (`context.rotate_keys` written back)."""
    keys[...] = rotated_keys(keys, delta, inv_freq)


def compact(buffer: np.ndarray, start: int, stop: int, length: int) -> None:
    """Remove rows [start, stop) of axis 2 from the valid rows [0, length) of `buffer`, in place; zero the freed tail."""
    removed = stop - start
    buffer[:, :, start:length - removed] = buffer[:, :, stop:length]      # numpy handles the overlap
    buffer[:, :, length - removed:length] = 0


class OrtInPlaceCache(KVCache):
    """The per-stream KV buffers of `decoder_gqa` and its IOBinding (batch 1)."""

    def __init__(self, session, entry: dict, capacity: int, rope: dict, *, device: str = "cpu"):
        self.ort = require("onnxruntime", extra="onnxruntime")
        graph = decoder_gqa_graph((len(entry["inputs"]) - 5) // 2)      # the names artifact/tensors.py declares
        if graph.input_names != [t["name"] for t in entry["inputs"]]:
            raise UsageError("the manifest's decoder_gqa inputs are not the ones this omnisift-edge declares; "
                             "export again with this omnisift-edge")
        (self.embeds_name, self.positions_name, self.seqlens_name, self.total_name,
         self.logits_index_name) = graph.input_names[:5]
        self.past_names, self.present_names = graph.input_names[5:], graph.output_names[1:]
        self.logits_name = graph.output_names[0]
        self.session, self.device, self.capacity = session, device, int(capacity)
        first = entry["inputs"][5]
        self.kv_heads, self.head_dim = first["shape"][1], first["shape"][3]
        self.float_type = np.float16 if first["dtype"] == "float16" else np.float32
        self.inv_freq = inverse_frequencies(rope["rope_theta"], self.head_dim)
        self.allocate()

    def allocate(self) -> None:
        """One zeroed [1, kv, M, hd] buffer per past name, bound as both its past input and its present output."""
        shape = (1, self.kv_heads, self.capacity, self.head_dim)                         # [1, kv, M, hd]
        ort = self.ort
        self.arrays: dict[str, np.ndarray] = {}
        self.values = {}
        for name in self.past_names:
            if self.device == "cpu":
                self.arrays[name] = np.zeros(shape, self.float_type)
                self.values[name] = ort.OrtValue.ortvalue_from_numpy(self.arrays[name])   # wraps, no copy
            else:
                self.values[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.float_type), self.device, 0)
        self._bind_buffers()

    def _bind_buffers(self) -> None:
        """A fresh IOBinding with every buffer in `values` bound as its past input and its present output."""
        self.binding = self.session.io_binding()
        self.binding.bind_output(self.logits_name, "cpu")   # first: get_outputs()[0] (rebinding keeps the slot)
        for past, present in zip(self.past_names, self.present_names):
            self.binding.bind_ortvalue_input(past, self.values[past])
            self.binding.bind_ortvalue_output(present, self.values[past])               # the same buffer
        self.length = 0

    def bind(self):
        """The IOBinding: every past buffer is bound once, as its own present too."""
        return self.binding

    def step(self, embeds: np.ndarray, positions: np.ndarray, want_logits: bool) -> np.ndarray | None:
        """Append embeds [1, n, D] at positions [3, 1, n]; logits [V] of the last row, or None."""
        n = int(embeds.shape[1])
        self.reserve(n)
        total = self.length + n
        b = self.bind()
        b.bind_cpu_input(self.embeds_name, np.ascontiguousarray(embeds, dtype=self.float_type))
        b.bind_cpu_input(self.positions_name, np.ascontiguousarray(positions, dtype=np.int64))
        b.bind_cpu_input(self.seqlens_name, np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input(self.total_name, np.array([total], dtype=np.int32))
        b.bind_cpu_input(self.logits_index_name, np.array([n - 1] if want_logits else [], dtype=np.int64))
        b.bind_output(self.logits_name, "cpu")
        self.session.run_with_iobinding(b)
        self.append(n)
        if not want_logits:
            return None
        return b.get_outputs()[0].numpy()[0, -1].astype(np.float32)                    # [V]

    def _host(self, name: str) -> np.ndarray:
        return self.arrays[name] if self.device == "cpu" else self.values[name].numpy()

    def _write_back(self, name: str, array: np.ndarray) -> None:
        if self.device != "cpu":
            self.values[name].update_inplace(array)

    def _drop(self, start: int, stop: int) -> None:
        for name in self.past_names:
            array = self._host(name)
            compact(array, start, stop, self.length)
            self._write_back(name, array)

    def _rotate(self, delta: int) -> None:
        for name in key_names(self.past_names):
            array = self._host(name)
            rotate_keys(array[:, :, :self.length], delta, self.inv_freq)
            self._write_back(name, array)

    def valid(self, names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Copies of the valid rows [1, kv, length, hd] of each buffer (for checks)."""
        return [self._host(n)[:, :, :self.length].copy() for n in (names or self.past_names)]


class OrtPastPresentCache(KVCache):
    """`decoder.onnx`'s packed cache: past [1, kv, length, hd] in, presents [1, kv, length + n, hd] out.

    The graph returns a longer copy on every call, so the cache grows with it (`capacity` follows
    `length`); the stream's max_context bounds it."""

    growable = True

    def __init__(self, session, num_layers: int, kv_heads: int, head_dim: int, float_type, rope_freqs: np.ndarray):
        graph = decoder_graph(num_layers)
        self.embeds_name, self.positions_name, self.mask_name = graph.input_names[:3]
        self.past_names, self.present_names = graph.input_names[3:], graph.output_names[1:]
        self.logits_name = graph.output_names[0]
        self.session, self.kv_heads, self.head_dim = session, int(kv_heads), int(head_dim)
        self.float_type, self.inv_freq = float_type, rope_freqs
        self.allocate()

    def allocate(self) -> None:
        self.past = {name: np.zeros((1, self.kv_heads, 0, self.head_dim), self.float_type)
                     for name in self.past_names}                                       # [1, kv, 0, hd]
        self.capacity = self.length = 0

    def bind(self) -> dict:
        """The past inputs: the packed arrays [1, kv, length, hd]."""
        return self.past

    def _grow(self, need: int) -> None:
        self.capacity = need                  # the graph's presents are the grown cache

    def append(self, added: int, outputs=None) -> None:
        """Keep the call's presents (in `present_names` order) as the next past."""
        self.past = dict(zip(self.past_names, outputs))
        self.length += added

    def step(self, embeds: np.ndarray, positions: np.ndarray, want_logits: bool) -> np.ndarray:
        """Append embeds [1, n, D] at positions [3, 1, n]; logits [V] of the last row."""
        n = int(embeds.shape[1])
        self.reserve(n)
        feeds = {self.embeds_name: embeds, self.positions_name: positions,
                 self.mask_name: np.ones((1, self.length + n), dtype=np.int64), **self.bind()}
        outputs = self.session.run([self.logits_name, *self.present_names], feeds)
        self.append(n, outputs[1:])
        return outputs[0][0, -1].astype(np.float32)                                      # [V]

    def _drop(self, start: int, stop: int) -> None:
        self.past = {name: drop_tokens(cache, start, stop) for name, cache in self.past.items()}
        self.capacity = self.length - (stop - start)

    def _rotate(self, delta: int) -> None:
        keys = set(key_names(self.past_names))
        self.past = {name: rotated_keys(cache, delta, self.inv_freq) if name in keys else cache
                     for name, cache in self.past.items()}
