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


class HostMemory:
    """Stands in for `trt_kv.CudaMemory` (no GPU here): byte buffers in host memory, the same layout."""

    allocated: list = []

    def allocate(self, nbytes):
        buffer = np.zeros(nbytes, np.uint8)
        self.allocated.append(nbytes)
        return buffer

    def offset(self, buffer, nbytes):
        return np.ascontiguousarray(buffer).view(np.uint8).reshape(-1)[nbytes:]    # the same memory

    def view(self, buffer, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return buffer[:n].view(dtype).reshape(shape)

    def copy_in(self, buffer, source, nbytes):
        buffer[:nbytes] = np.ascontiguousarray(source).view(np.uint8).reshape(-1)[:nbytes]

    def to_host(self, view):
        return np.array(view)

    def same_memory(self, view, buffer):
        return view.__array_interface__["data"][0] == buffer.__array_interface__["data"][0]

    def from_host(self, buffer, array):
        buffer[:array.nbytes] = array.view(np.uint8).reshape(-1)

    def free(self, buffer):
        pass


def session_answers(session, clip):
    """Stream `clip` into `session` in 2-second appends, ask twice: (answers, kept counts, kept positions)."""
    per_frame = int(session.spec.sample_rate / session.spec.fps)
    for j in range(0, len(clip.frames), 4):
        session.append_chunk(clip.frames[j:j + 4], clip.pcm[j * per_frame:(j + 4) * per_frame])
    first = list(session.ask_ids("What happens?", max_new_tokens=6))
    second = list(session.ask_ids("And after that?", max_new_tokens=4))
    return first, second, [(r.kept_video, r.kept_audio) for r in session.reports], \
        [p.tolist() for p in session.stream.kept_positions]


def clip_features(model, seconds: float, seed: int = 0, size=(56, 84)):
    """A generated clip's whole-clip encoder inputs (`runtime.torch_pipeline.ClipFeatures`) at `size`."""
    from omnisift_edge.model.preprocess import log_mel, video_patches
    from omnisift_edge.model.synthetic import synthetic_clip
    from omnisift_edge.runtime.torch_pipeline import ClipFeatures

    clip = synthetic_clip(seconds, *size, seed=seed)
    pixel_values, grid_thw = video_patches(clip.frames, model.spec, size=size)
    return ClipFeatures(pixel_values=pixel_values, grid_thw=tuple(int(v) for v in grid_thw),
                        mel=log_mel(clip.pcm, model.spec))
