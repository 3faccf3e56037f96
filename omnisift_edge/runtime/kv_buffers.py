"""KV caches allocated once per stream and written in place, for the exported-graph backends.

`OrtInPlaceCache` drives `decoder_gqa.onnx` (see `artifact.tensors.decoder_gqa_graph`): one buffer
[1, kv_heads, capacity, head_dim] per layer and kind, wrapped in an OrtValue once and bound with
IOBinding as both the past input and the present output, so ONNX Runtime's GroupQueryAttention
writes only the new rows and attends over the valid rows; a call never copies the cache. On the CPU
the OrtValues wrap numpy arrays (no copy), so `drop` (compaction) and `rotate` (RoPE re-basing) work
on the same memory in place; on another device they round-trip through the host (rare operations).

Names, shapes and rope settings come from the manifest, never from literals here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from omnisift_edge.errors import UsageError, require
from omnisift_edge.runtime.context import inv_freq as inverse_frequencies
from omnisift_edge.runtime.context import rotate_keys as rotated_keys


def rotate_keys(keys: np.ndarray, delta: int, inv_freq: np.ndarray) -> None:
    """Re-base cached keys [..., n, hd] by -delta positions in place (`context.rotate_keys` written back)."""
    keys[...] = rotated_keys(keys, delta, inv_freq)


def compact(buffer: np.ndarray, start: int, stop: int, length: int) -> None:
    """Remove rows [start, stop) of axis 2 from the valid rows [0, length) of `buffer`, in place; zero the freed tail."""
    removed = stop - start
    buffer[:, :, start:length - removed] = buffer[:, :, stop:length]      # numpy handles the overlap
    buffer[:, :, length - removed:length] = 0


class OrtInPlaceCache:
    """The per-stream KV buffers of `decoder_gqa` and its IOBinding (batch 1)."""

    def __init__(self, session, entry: dict, capacity: int, rope: dict, *, device: str = "cpu"):
        ort = require("onnxruntime", extra="onnxruntime")
        self.session, self.device, self.capacity = session, device, int(capacity)
        self.past_names = [t["name"] for t in entry["inputs"] if t["name"].startswith("past_key_values.")]
        self.present_names = [t["name"] for t in entry["outputs"] if t["name"].startswith("present.")]
        first = next(t for t in entry["inputs"] if t["name"] == self.past_names[0])
        kv_heads, head_dim = first["shape"][1], first["shape"][3]
        self.float_type = np.float16 if first["dtype"] == "float16" else np.float32
        self.inv_freq = inverse_frequencies(rope["rope_theta"], head_dim)
        shape = (1, kv_heads, self.capacity, head_dim)                                  # [1, kv, M, hd]
        self.arrays: dict[str, np.ndarray] = {}
        self.values = {}
        for name in self.past_names:
            if device == "cpu":
                self.arrays[name] = np.zeros(shape, self.float_type)
                self.values[name] = ort.OrtValue.ortvalue_from_numpy(self.arrays[name])   # wraps, no copy
            else:
                self.values[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.float_type), device, 0)
        self.binding = session.io_binding()
        self.binding.bind_output("logits", "cpu")      # first: get_outputs()[0] (rebinding keeps the slot)
        for past, present in zip(self.past_names, self.present_names):
            self.binding.bind_ortvalue_input(past, self.values[past])
            self.binding.bind_ortvalue_output(present, self.values[past])               # the same buffer
        self.length = 0

    def step(self, embeds: np.ndarray, positions: np.ndarray, want_logits: bool) -> np.ndarray | None:
        """Append embeds [1, n, D] at positions [3, 1, n]; logits [V] of the last row, or None."""
        n = int(embeds.shape[1])
        total = self.length + n
        if total > self.capacity:
            raise UsageError(f"the KV cache holds {self.capacity} tokens ({self.length} cached + {n} new); "
                             "start a new stream or allocate a larger max context")
        b = self.binding
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=self.float_type))
        b.bind_cpu_input("position_ids", np.ascontiguousarray(positions, dtype=np.int64))
        b.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input("total_sequence_length", np.array([total], dtype=np.int32))
        b.bind_cpu_input("logits_index", np.array([n - 1] if want_logits else [], dtype=np.int64))
        b.bind_output("logits", "cpu")
        self.session.run_with_iobinding(b)
        self.length = total
        if not want_logits:
            return None
        return b.get_outputs()[0].numpy()[0, -1].astype(np.float32)                    # [V]

    def _host(self, name: str) -> np.ndarray:
        return self.arrays[name] if self.device == "cpu" else self.values[name].numpy()

    def _write_back(self, name: str, array: np.ndarray) -> None:
        if self.device != "cpu":
            self.values[name].update_inplace(array)

    def drop(self, start: int, stop: int) -> None:
        """Remove cached tokens [start, stop); later ones move down within the same buffers."""
        if not 0 <= start <= stop <= self.length:
            raise UsageError(f"cannot drop cached tokens [{start}, {stop}) of {self.length}")
        if start == stop:
            return
        for name in self.past_names:
            array = self._host(name)
            compact(array, start, stop, self.length)
            self._write_back(name, array)
        self.length -= stop - start

    def rotate(self, delta: int) -> None:
        """Re-base every cached key's position by -delta (values are position-free)."""
        for name in self.past_names:
            if name.endswith(".key"):
                array = self._host(name)
                rotate_keys(array[:, :, :self.length], delta, self.inv_freq)
                self._write_back(name, array)

    def valid(self, names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Copies of the valid rows [1, kv, length, hd] of each buffer (for checks)."""
        return [self._host(n)[:, :, :self.length].copy() for n in (names or self.past_names)]
