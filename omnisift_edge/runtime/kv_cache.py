"""The one KV-cache protocol every backend's cache implements and every stream owns.

A stream (runtime/stream.py) holds one `KVCache` and asks it six things:
- `allocate()`: the storage for `capacity` rows, zeroed (called once when the cache opens);
- `bind()`: the past inputs of the next decoder call (arrays, device views or an IOBinding);
- `append(added, outputs)`: a call wrote `added` rows (some forms copy or check the presents);
- `drop(start, stop)`: evict cached tokens [start, stop), later ones move down (sliding context);
- `rotate(delta)`: re-base every cached key by -delta positions (RoPE; values carry no position);
- `reset()`: empty the cache, keeping its storage (a new stream on the same buffers).

Storage is, per layer and kind (`past_names`), one buffer [1, kv_heads, capacity, head_dim] whose
rows [0, length) are valid. Only `allocate` creates storage, so a multi-stream pool can give each
stream's cache its slot [s:s+1] of one [max_streams, kv_heads, capacity, head_dim] buffer by
overriding it. The guards (room for a call, a valid drop range) and their messages live here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from omnisift_edge.errors import UsageError


def key_names(names) -> list[str]:
    """The key buffers among past tensor names (`past_key_values.{i}.key`, artifact/tensors.py)."""
    return [n for n in names if n.endswith(".key")]


class KVCache(ABC):
    """One stream's KV cache: `length` valid rows of `capacity` (see the module docstring)."""

    capacity: int = 0
    length: int = 0
    growable = False                                   # reallocate (double) when full instead of refusing
    larger = "allocate a larger max context"           # the fix named when the cache is full

    @abstractmethod
    def allocate(self) -> None:
        """Create the zeroed storage for `capacity` rows; `length` becomes 0."""

    @abstractmethod
    def bind(self) -> Any:
        """The past inputs of the next decoder call (no copy of the cache where the form allows)."""

    def append(self, added: int, outputs: Any = None) -> None:
        """A decoder call wrote `added` rows (in place); `outputs` are its presents where a form needs them."""
        self.length += added

    @abstractmethod
    def _drop(self, start: int, stop: int) -> None:
        """Move rows [stop, length) down to `start` in every buffer (the guard has run)."""

    @abstractmethod
    def _rotate(self, delta: int) -> None:
        """Rotate the valid rows of every key buffer by -delta positions."""

    def _grow(self, need: int) -> None:
        """Reallocate for at least `need` rows, keeping the valid ones (growable caches)."""
        raise NotImplementedError(f"{type(self).__name__} cannot grow")

    def reserve(self, added: int) -> None:
        """Make sure `added` more rows fit (growing a growable cache); else one readable line."""
        total = self.length + added
        if total <= self.capacity:
            return
        if not self.growable:
            raise UsageError(f"the KV cache holds {self.capacity} tokens ({self.length} cached + {added} new); "
                             f"start a new stream or {self.larger}")
        self._grow(total)

    def drop(self, start: int, stop: int) -> None:
        """Remove cached tokens [start, stop); later ones move down within the same storage."""
        if not 0 <= start <= stop <= self.length:
            raise UsageError(f"cannot drop cached tokens [{start}, {stop}) of {self.length}")
        if start == stop:
            return
        self._drop(start, stop)
        self.length -= stop - start

    def rotate(self, delta: int) -> None:
        """Re-base every cached key's position by -delta (exact for RoPE; values are position-free)."""
        self._rotate(delta)

    def reset(self) -> None:
        """Forget every row: the storage is kept and zeroed (rows past `length` stay defined)."""
        if self.length:
            self._drop(0, self.length)                 # compaction of everything: zeroes the valid rows
        self.length = 0

    def close(self) -> None:
        """Release device storage (nothing to do for host memory)."""
