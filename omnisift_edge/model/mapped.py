"""A thinker's weights held memory-mapped from files instead of copied into anonymous memory (for export).

Copied weights are anonymous memory: the machine must keep all of them in RAM (or swap) for the whole
export. Mapped from a file (private, copy-on-write) they are clean file-backed pages the kernel may
drop under memory pressure and read back when touched, so what an export really needs is its anonymous
memory plus a working set (docs/benchmarks.md, "Real-size export cost", measures it in a memory cgroup).

`MappedWeights(file, dtype, keep, scratch)` maps one safetensors file: a tensor that already has `dtype`
(and an aligned offset) is a view of the checkpoint itself; the others (a bf16 checkpoint exported in
fp16) are converted once, tensor by tensor, into one scratch file in `scratch`, which is unlinked as
soon as it is mapped (its pages live until the process ends; nothing is left behind). A mapped
parameter that is written later (AWQ folding its scales) becomes private anonymous memory page by page;
the files never change.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from omnisift_edge.errors import require

_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ALIGN = 64   # scratch tensors start at multiples of this


def read_header(file: Path) -> tuple[dict, int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where the data starts."""
    with open(file, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class MappedWeights:
    """The tensors of one safetensors file named by `keep`, in `dtype`, as views of mapped files."""

    def __init__(self, file: Path, dtype, keep: Callable[[str], bool], scratch: Path):
        torch = require("torch")
        self.header, self.start = read_header(file)
        self.dtype, self.base = dtype, _map(torch, file)
        self.converted: dict[str, tuple[int, tuple[int, ...]]] = {}
        convert = [k for k, v in self.header.items() if keep(k) and not self._direct(torch, v)]
        self.scratch = self._convert(torch, convert, scratch) if convert else None

    def _direct(self, torch, entry: dict) -> bool:
        """Whether the checkpoint's bytes are the tensor in `dtype` at an offset a view can start at."""
        dtype = getattr(torch, _DTYPES[entry["dtype"]])
        size = torch.empty((), dtype=dtype).element_size()
        return dtype == self.dtype and (self.start + entry["data_offsets"][0]) % size == 0

    def _raw(self, torch, entry: dict):
        """The checkpoint's tensor (in its own dtype) as a view of the mapping."""
        begin, end = (self.start + o for o in entry["data_offsets"])
        dtype = getattr(torch, _DTYPES[entry["dtype"]])
        data = self.base[begin:end]
        if (begin % torch.empty((), dtype=dtype).element_size()) != 0:
            data = data.clone()                              # unaligned: a copy (never for a real checkpoint)
        return data.view(dtype).view(entry["shape"])

    def _convert(self, torch, keys: list[str], scratch: Path):
        """Write `keys` converted to `dtype` into one scratch file, map it and unlink it."""
        fd, name = tempfile.mkstemp(prefix=".weights-", suffix=".scratch", dir=scratch)
        try:
            with os.fdopen(fd, "wb") as out:
                for key in keys:
                    out.write(b"\0" * (-out.tell() % _ALIGN))
                    tensor = self._raw(torch, self.header[key]).to(self.dtype).contiguous()
                    self.converted[key] = (out.tell(), tuple(tensor.shape))
                    out.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            return _map(torch, Path(name))
        finally:
            os.unlink(name)   # the mapping keeps the pages; nothing stays on disk

    def tensor(self, key: str):
        """`key` in `dtype`: a view of the checkpoint, or of the scratch file when it was converted."""
        torch = require("torch")
        if key not in self.converted:
            return self._raw(torch, self.header[key])
        offset, shape = self.converted[key]
        count = 1
        for n in shape:
            count *= n
        size = torch.empty((), dtype=self.dtype).element_size()
        return self.scratch[offset:offset + count * size].view(self.dtype).view(shape)


def _map(torch, file: Path):
    """The whole file as a uint8 tensor on a private (copy-on-write) mapping: torch.from_file, shared=False."""
    size = file.stat().st_size
    return torch.from_file(str(file), shared=False, size=size, dtype=torch.uint8)
