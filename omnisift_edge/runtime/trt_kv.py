"""The TensorRT stream's KV cache, kept on the device between calls (no host round trip).

The `decoder` engine takes past [1, kv, P, hd] and returns present [1, kv, P + n, hd] (TensorRT
10.3 and TensorRT-RTX 1.7 cannot run ONNX Runtime's GroupQueryAttention form). Before this, the
Python stream fed numpy arrays, so every call copied the whole cache host -> device -> host.
Now each layer's cache lives in one device buffer allocated once per stream for max_context rows,
packed as [1, kv, P, hd]; the engine reads it in place (a Polygraphy `DeviceView` input is bound
by pointer) and its presents, which Polygraphy's output allocator owns and reuses, are copied
device-to-device back into it after the call. That copy, plus the engine's own concatenation of
past and new rows, is the per-token cost of this fallback: O(cache) device bandwidth, no PCIe.

Where the build has the in-place decoder (`decoder_scatter`: TensorRT's IKVCacheUpdateLayer, TensorRT
>= 10.15 / TensorRT-RTX), `StaticDeviceKV` holds one buffer per layer and kind [1, kv, cache_length, hd]
(the engine's static cache), bound as the past input and, through TensorRT's aliasing, as its present
output: the engine writes the new rows at write_index and nothing is copied after the call.

Both implement runtime/kv_cache.py's protocol. Memory operations go through `CudaMemory` (Polygraphy's own CUDA wrapper: no other binding).
"""

from __future__ import annotations

import numpy as np

from omnisift_edge.errors import UsageError
from omnisift_edge.runtime.kv_buffers import compact, rotate_keys
from omnisift_edge.runtime.kv_cache import KVCache, key_names


class _Address:
    """A device address inside an allocation: what `CudaMemory`'s views and copies read (`.ptr`)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class CudaMemory:
    """Device allocation, views and copies through `polygraphy.cuda`."""

    def __init__(self):
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        self.cuda, self.DataType = cuda, DataType

    def allocate(self, nbytes: int):
        return self.cuda.DeviceArray.raw((nbytes,))

    def offset(self, buffer, nbytes: int):
        """The memory `nbytes` into `buffer` (a slot of a stream pool's buffer), usable wherever a buffer is."""
        return _Address(int(buffer.ptr) + int(nbytes))

    def view(self, buffer, shape: tuple[int, ...], dtype):
        return self.cuda.DeviceView(buffer.ptr, shape, self.DataType.from_dtype(np.dtype(dtype)))

    def copy_in(self, buffer, source, nbytes: int) -> None:
        """Device-to-device: `nbytes` of the engine's output view `source` into `buffer`."""
        if nbytes:
            self.cuda.wrapper().memcpy(dst=buffer.ptr, src=source.ptr, nbytes=nbytes,
                                       kind=self.cuda.MemcpyKind.DeviceToDevice)

    def to_host(self, view) -> np.ndarray:
        return view.numpy()

    def same_memory(self, view, buffer) -> bool:
        """Does the engine's output `view` start at `buffer` (an aliased present bound to our cache)?"""
        return int(view.ptr) == int(buffer.ptr)

    def from_host(self, buffer, array: np.ndarray) -> None:
        self.cuda.wrapper().memcpy(dst=buffer.ptr, src=array.ctypes.data, nbytes=array.nbytes,
                                   kind=self.cuda.MemcpyKind.HostToDevice)

    def free(self, buffer) -> None:
        buffer.free()


class DeviceKV(KVCache):
    """One device buffer per past tensor, [1, kv, capacity, hd] bytes, holding [1, kv, length, hd] packed."""

    larger = "rebuild the engines with a larger --max-context"

    def __init__(self, past_names, present_names, kv_heads: int, head_dim: int, capacity: int, float_type,
                 memory=None, inv_freq: np.ndarray | None = None):
        self.memory = memory or CudaMemory()
        self.past_names, self.present_names = list(past_names), list(present_names)
        self.kv_heads, self.head_dim, self.capacity = int(kv_heads), int(head_dim), int(capacity)
        self.float_type = np.dtype(float_type)
        self.inv_freq = inv_freq                                                         # [hd/2], for rotate
        self.row_bytes = self.kv_heads * self.head_dim * self.float_type.itemsize       # one token, all heads
        self.allocate()

    def allocate(self) -> None:
        """One device buffer of `capacity` rows per past name (its packed rows are the only ones read)."""
        self.buffers = {name: self.memory.allocate(self.capacity * self.row_bytes) for name in self.past_names}
        self.length = 0

    def bind(self) -> dict:
        """The past inputs: views [1, kv, length, hd] of the device buffers (no copy)."""
        shape = (1, self.kv_heads, self.length, self.head_dim)
        return {name: self.memory.view(self.buffers[name], shape, self.float_type) for name in self.past_names}

    def append(self, added: int, outputs=None) -> None:
        """Copy the engine's presents [1, kv, length + added, hd] (device views) back into the buffers."""
        self.reserve(added)
        total = self.length + added
        for past, present in zip(self.past_names, self.present_names):
            self.memory.copy_in(self.buffers[past], outputs[present], total * self.row_bytes)
        self.length = total

    def _rewrite(self, names, change) -> None:
        """Rare edits (drop, rotate) through the host: copy [1, kv, length, hd] out, change it, copy it back."""
        shape = (1, self.kv_heads, self.length, self.head_dim)
        for name in names:
            array = np.ascontiguousarray(change(self.memory.to_host(self.memory.view(self.buffers[name], shape,
                                                                                       self.float_type))))
            self.memory.from_host(self.buffers[name], array)

    def _drop(self, start: int, stop: int) -> None:
        """Repacked within the same buffers."""
        self._rewrite(self.past_names, lambda a: np.delete(a, np.s_[start:stop], axis=2))

    def _rotate(self, delta: int) -> None:
        def turn(a):
            a = a.copy()
            rotate_keys(a, delta, self.inv_freq)
            return a

        self._rewrite(key_names(self.past_names), turn)

    def close(self) -> None:
        for buffer in self.buffers.values():
            self.memory.free(buffer)
        self.buffers = {}


class StaticDeviceKV(DeviceKV):
    """The in-place decoder's cache: one device buffer [1, kv, capacity, hd] per past tensor, rows [0, length)
    valid. The engine reads and writes it in place (present aliases past); this class only counts rows and
    does the rare edits (drop, rotate) through the host."""

    def allocate(self) -> None:
        """Zeroed buffers: rows past the valid length are never read, but stay defined."""
        self.shape = (1, self.kv_heads, self.capacity, self.head_dim)                     # [1, kv, M, hd]
        nbytes = int(np.prod(self.shape)) * self.float_type.itemsize
        self.buffers = {name: self.memory.allocate(nbytes) for name in self.past_names}
        for name in self.past_names:
            self.memory.from_host(self.buffers[name], np.zeros(self.shape, self.float_type))
        self.length = 0

    def bind(self) -> dict:
        """The past inputs: the whole buffers [1, kv, capacity, hd] (no copy); the presents alias them."""
        return {name: self.memory.view(self.buffers[name], self.shape, self.float_type) for name in self.past_names}

    def append(self, added: int, outputs=None) -> None:
        """After a call: the presents must be our buffers (aliased, written in place); `added` rows are valid."""
        for past, present in zip(self.past_names, self.present_names):
            if not self.memory.same_memory(outputs[present], self.buffers[past]):
                raise UsageError(f"the decoder engine returned {present} in its own memory, not in {past}'s: it is "
                                 "not an in-place engine, or this Polygraphy does not bind aliased outputs (>= 0.53.6 "
                                 "does); upgrade polygraphy or rebuild the engines")
        self.length += added

    def _rewrite(self, names, change) -> None:
        """Rare edits through the host: copy a whole buffer out, `change` it in place, copy it back."""
        for name in names:
            host = np.array(self.memory.to_host(self.memory.view(self.buffers[name], self.shape, self.float_type)))
            change(host)
            self.memory.from_host(self.buffers[name], np.ascontiguousarray(host))

    def _drop(self, start: int, stop: int) -> None:
        """Later rows move down, the freed tail is zeroed."""
        self._rewrite(self.past_names, lambda a: compact(a, start, stop, self.length))

    def _rotate(self, delta: int) -> None:
        self._rewrite(key_names(self.past_names), lambda a: rotate_keys(a[:, :, :self.length], delta, self.inv_freq))
