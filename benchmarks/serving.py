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

--real-pace instead searches the largest N held at real time (as benchmarks/pool.py --cameras does
in process): each camera sends a 2-s chunk every 2 s of wall time (offsets spread over one period,
one untimed warm-up chunk first); N is held when every chunk is answered within 2 s of its due
time. N doubles from --streams' first value until it fails, then bisects (to within 1/8).
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


def paced_trial(url: str, clips: list, seconds: float, first_id: int) -> tuple[int, int, float, float]:
    """N cameras at real pace through the server: (late chunks, chunks, p50 latency, max latency)."""
    import numpy as np

    n = len(clips)
    cameras = [CameraClient(url, first_id + i, timeout=600) for i in range(n)]
    for camera in cameras:
        camera.request(start=True)
    latencies, errors = [], []
    start = time.perf_counter() + 2.0 + 0.5 * n

    def run(i, camera, clip):
        try:
            for k, (frames, pcm) in enumerate(_chunks(clip)[:int(seconds // 2) + 1]):
                due = start + 2.0 * i / n + 2.0 * (k - 1)          # chunk 0: warm-up, before the clock
                if k:
                    time.sleep(max(0.0, due - time.perf_counter()))
                camera.chunk(frames, pcm)
                if k:
                    latencies.append(time.perf_counter() - due)
            camera.end()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, *pair)) for i, pair in enumerate(zip(cameras, clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for camera in cameras:
        camera.close()
    if errors:
        raise errors[0]
    flat = np.array(latencies)
    return int((flat > 2.0).sum()), int(flat.size), float(np.median(flat)), float(flat.max())


def paced_search(url: str, clips: list, seconds: float, start: int) -> int:
    held, failed, n, trial = 0, None, start, 0
    print("| cameras | held | late chunks | p50 latency | max latency |\n|---|---|---|---|---|")
    while n <= len(clips):
        trial += 1
        late, chunks, p50, worst = paced_trial(url, clips[:n], seconds, first_id=1000 * trial)
        print(f"| {n} | {'yes' if not late else 'no'} | {late}/{chunks} | {p50:.2f} s | {worst:.2f} s |", flush=True)
        held, failed = (n, failed) if not late else (held, n)
        if failed is None:
            if n == len(clips):
                break
            n = min(2 * n, len(clips))
        elif failed - held <= max(1, held // 8):
            break
        else:
            n = (held + failed) // 2
    print(f"\nthrough Triton (pool): {held} cameras held at real time (search limit {len(clips)})")
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help="An export folder (default: export the embedded default).")
    parser.add_argument("--resolution", default="448x448")
    parser.add_argument("--seconds", type=float, default=20.0, help="Media per camera.")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--real-pace", action="store_true", help="search the cameras held at real time instead")
    parser.add_argument("--limit", type=int, default=32, help="--real-pace: the largest N tried (the pool's size)")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    h, w = (int(v) for v in args.resolution.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="omnisift-serving-bench-"))
    export = args.export
    if export is None:
        from omnisift_edge.export.stage import ExportConfig, export as run_export

        export = work / "export"
        run_export(ExportConfig(out=export, ratios=(0.25,), resolution=(h, w)))
    streams = args.limit if args.real_pace else max(counts)
    repo = triton(TritonConfig(export=export, out=work / "repo", max_streams=streams,
                               idle_timeout=600, instances=args.instances))
    seconds = args.seconds + 2.0 if args.real_pace else args.seconds        # + the warm-up chunk
    clips = [synthetic_clip(seconds, *repo.resolution, seed=i) for i in range(min(streams, 4))]
    clips = [clips[i % len(clips)] for i in range(streams)]
    print(f"# {platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{repo.resolution[0]}x{repo.resolution[1]}, ratio {repo.ratio:g}, {args.seconds:g} s per camera, "
          f"{args.instances} instance(s)")
    if args.real_pace:
        with start_local_server(repo.folder) as server:
            paced_search(server.grpc_url, clips, args.seconds, counts[0])
        return
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
