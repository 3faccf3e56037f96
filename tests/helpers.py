"""Helpers shared by test modules (not tests themselves): the CLI in a fresh interpreter, generated media files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]   # the square's colour in second 0, 1, 2, 3


def run_cli(*args: str, block_heavy: bool = False) -> subprocess.CompletedProcess:
    """Run `omnisift-edge ARGS` in a fresh interpreter; optionally make torch & co. unimportable."""
    prelude = ""
    if block_heavy:
        prelude = ("import sys\n"
                   "for name in ('torch', 'transformers', 'onnxruntime', 'tensorrt', 'av', 'safetensors'):\n"
                   "    sys.modules[name] = None\n")
    code = prelude + f"from omnisift_edge.cli import main\nmain({list(args)!r}, prog_name='omnisift-edge')\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def _image(t: float, seconds: float, w: int, h: int) -> np.ndarray:
    """A grey frame with a 16x16 square that moves left to right and changes colour every second."""
    img = np.full((h, w, 3), 64, np.uint8)                                  # [H, W, 3]
    x = int((w - 16) * t / seconds)
    img[h // 2 - 8:h // 2 + 8, x:x + 16] = COLOURS[int(t) % len(COLOURS)]
    return img


def write_clip(path, *, seconds=3.0, fps=25, w=96, h=64, vcodec="mpeg4", acodec="aac", sr=44100,
           layout="stereo", tone=440.0, video=True, audio=True):
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream(vcodec, rate=fps) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream(acodec, rate=sr) if audio else None
        if a is not None:
            a.layout = layout
        if vs is not None:
            for i in range(int(round(seconds * fps))):
                frame = av.VideoFrame.from_ndarray(_image(i / fps, seconds, w, h), format="rgb24")
                frame.pts = i
                c.mux(vs.encode(frame))
            c.mux(vs.encode())
        if a is not None:
            n, channels = int(seconds * sr), (2 if layout == "stereo" else 1)
            pcm = (0.5 * np.sin(2 * np.pi * tone * np.arange(n) / sr)).astype(np.float32)     # [n]
            for s in range(0, n, 1024):
                block = np.ascontiguousarray(np.repeat(pcm[None, s:s + 1024], channels, 0))  # [ch, <=1024]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = sr, s
                c.mux(a.encode(frame))
            c.mux(a.encode())
    return path
