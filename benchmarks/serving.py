"""How many camera streams one Triton server keeps at real time, against one in-process session.

Exports the embedded default (or takes --export DIR), writes the Triton repository, starts
nvidia-pytriton's tritonserver on 127.0.0.1, then for each N in --streams: N cameras open their
sequences (a bare START, not timed), then send their media as fast as the server answers (2-s
chunks of frames + PCM) over gRPC, concurrently. RTF = wall time for all N streams / media
seconds per stream: below 1, the server processes N streams faster than the cameras produce them,
so it keeps N real-time cameras. The in-process RTF of one OmniSession on the same chunks is
measured in the same run, first, as the reference (ratio served-1-stream / in-process = the
serving overhead).

    python benchmarks/serving.py [--resolution 448x448] [--seconds 20] [--streams 1,2,4,8] [--instances 1]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from omnisift_edge.model.synthetic import synthetic_clip
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig
from omnisift_edge.serving.client import CameraClient
from omnisift_edge.serving.local import start_local_server
from omnisift_edge.serving.repository import TritonConfig, triton

CHUNK_FRAMES, FPS, RATE = 4, 2, 16000


def _chunks(clip):
    step = CHUNK_FRAMES * RATE // FPS
    return [(clip.frames[j:j + CHUNK_FRAMES], clip.pcm[k:k + step])
            for j, k in zip(range(0, len(clip.frames), CHUNK_FRAMES), range(0, len(clip.pcm), step))]


def in_process_rtf(export: Path, clip, seconds: float) -> float:
    session = OmniSession(RuntimeConfig(export))
    start = time.perf_counter()
    for frames, pcm in _chunks(clip):
        session.append_chunk(frames, pcm)
    session.finish()
    return (time.perf_counter() - start) / seconds


def served_rtf(url: str, clips: list, seconds: float, first_id: int) -> float:
    cameras = [CameraClient(url, first_id + i, timeout=600) for i in range(len(clips))]
    for camera in cameras:
        camera.request(start=True)
    errors = []

    def run(camera, clip):
        try:
            for frames, pcm in _chunks(clip):
                camera.chunk(frames, pcm)
            camera.end()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(cameras, clips)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for camera in cameras:
        camera.close()
    if errors:
        raise errors[0]
    return wall / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help="An export folder (default: export the embedded default).")
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--seconds", type=float, default=20.0, help="Media per camera.")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    h, w = (int(v) for v in args.resolution.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="omnisift-serving-bench-"))
    export = args.export
    if export is None:
        from omnisift_edge.export.stage import ExportConfig, export as run_export

        export = work / "export"
        run_export(ExportConfig(out=export, ratios=(0.25,), resolution=(h, w)))
    repo = triton(TritonConfig(export=export, out=work / "repo", max_streams=max(counts),
                               idle_timeout=600, instances=args.instances))
    clips = [synthetic_clip(args.seconds, *repo.resolution, seed=i) for i in range(max(counts))]
    print(f"# {platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{repo.resolution[0]}x{repo.resolution[1]}, ratio {repo.ratio:g}, {args.seconds:g} s per camera, "
          f"{args.instances} instance(s)")
    reference = in_process_rtf(export, clips[0], args.seconds)
    print(f"in-process, 1 stream: RTF {reference:.3f}")
    print("| streams | RTF (wall / media s) | real time | vs in-process x N |")
    print("|---|---|---|---|")
    with start_local_server(repo.folder) as server:
        for i, n in enumerate(counts):
            rtf = served_rtf(server.grpc_url, clips[:n], args.seconds, first_id=1000 * (i + 1))
            print(f"| {n} | {rtf:.3f} | {'yes' if rtf < 1 else 'no'} | {rtf / (reference * n):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
