"""Measured peak host memory of one decoder call in ONNX Runtime (CPU), to check the memory plan.

`measure_decoder_peak(path, sequence, past)` runs, in a fresh Python process (so nothing else in
this one counts), session creation and one decoder call with `sequence` new tokens on a cache of
`past`, and returns the process's peak RSS above its RSS just before the session was created
(VmHWM, reset after the imports through /proc/self/clear_refs: Linux only), with the load-time and
resident figures. The CPU memory arena is off: its
power-of-two growth is an ONNX Runtime allocator policy, not memory the graph needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omnisift_edge.errors import UsageError

_SCRIPT = r"""
import json, sys
import numpy as np, onnxruntime as ort
path, S, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status(key):   # VmHWM: peak RSS since the last reset; VmRSS: now
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024
def hwm():
    return status("VmHWM")
with open("/proc/self/clear_refs", "w") as f:   # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    f.write("5")
base = status("VmRSS")
assert hwm() <= base + (8 << 20), "could not reset the peak RSS (VmHWM)"
so = ort.SessionOptions(); so.enable_cpu_mem_arena = False; so.log_severity_level = 3
so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
load_peak = hwm() - base
resident = status("VmRSS") - base
ins = {i.name: i for i in s.get_inputs()}
D = ins["inputs_embeds"].shape[2]
key = next(i for n, i in ins.items() if n.startswith("past_key_values"))
kv, hd = key.shape[1], key.shape[3]
ft = np.float16 if ins["inputs_embeds"].type == "tensor(float16)" else np.float32
feed = {"inputs_embeds": np.zeros((1, S, D), ft), "position_ids": np.zeros((3, 1, S), np.int64),
        "attention_mask": np.ones((1, P + S), np.int64)}
feed.update({n: np.zeros((1, kv, P, hd), ft) for n in ins if n.startswith("past_key_values")})
out = s.run(None, feed)
peak = hwm() - base
print(json.dumps({"peak": peak, "load_peak": load_peak, "resident_after_load": resident,
                  "inputs": sum(v.nbytes for v in feed.values()), "outputs": sum(o.nbytes for o in out)}))
"""


@dataclass(frozen=True)
class DecoderPeak:
    sequence: int
    past: int
    peak: int                    # process peak RSS above the pre-session RSS, bytes
    load_peak: int               # the same, right after session creation
    resident_after_load: int     # RSS above the pre-session RSS once the session exists
    inputs: int                  # bytes of the feeds (cache in)
    outputs: int                 # bytes of the outputs (logits, cache out)


def measure_decoder_peak(path, sequence: int, past: int, *, timeout: float = 600) -> DecoderPeak:
    """Peak memory of loading `path` (a decoder.onnx) and one call of `sequence` tokens on `past`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such decoder graph: {path}")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(path), str(sequence), str(past)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {done.stderr.strip()[-2000:]}")
    return DecoderPeak(sequence, past, **json.loads(done.stdout.strip().splitlines()[-1]))
