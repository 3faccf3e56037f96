"""`omnisift-edge watch`: option parsing only; the live stage (`omnisift_edge.live`) does the work.

In its own module to keep `cli/__init__.py` under the size limit; registered there with
`main.add_command`.
"""

from __future__ import annotations

from pathlib import Path

import click

from omnisift_edge.cli.options import _user_errors


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("source")
@click.option("--question", default=None, help="Asked every --ask-every seconds (or once at the end without it).")
@click.option("--ask-every", type=float, default=None, help="Seconds of stream between --question.")
@click.option("--seconds", type=float, default=None, help="Seconds of stream to watch (default: until it ends or Ctrl-C).")
@click.option("--ratio", type=float, default=None, help="One of the export's ratios (needed when it has several).")
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--target", default=None, help="tensorrt: which built engines (default: the only one built).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--context-policy", type=click.Choice(["sliding", "error"]), default="sliding", show_default=True,
              help="sliding evicts the oldest chunks of the endless stream (docs/runtime.md).")
@click.option("--window-seconds", type=float, default=None, help="sliding: seconds of media kept (default: what fits).")
@click.option("--events", type=click.Path(path_type=Path), default=None, help="Write every event as a JSON line here.")
@click.option("--view", default=None, help="Serve the live page on HOST:PORT (e.g. 127.0.0.1:8080; port 0: any free).")
@click.option("--realtime", is_flag=True, help="A file source: play it at its real pace (like a camera).")
@click.option("--format", "fmt", default=None, help="Force FFmpeg's demuxer (e.g. mpegts, v4l2).")
@click.option("--audio", default=None,
              help="A separate audio input instead of the stream's own: alsa:DEVICE, pulse:DEVICE, or a URL/file.")
@click.option("--require-audio", is_flag=True, help="Refuse a source without audio (default: silence, stated).")
@click.option("--queue", type=click.IntRange(1, 64), default=2, show_default=True, help="Chunks waiting at most.")
@click.option("--drop-policy", type=click.Choice(["oldest", "thin"]), default="oldest", show_default=True,
              help="Which queued chunk goes when inference falls behind (docs/live.md).")
@click.option("--max-lag", type=float, default=3.0, show_default=True,
              help="Seconds a queued chunk may wait for inference; older ones are dropped (policy stale).")
@click.option("--open-timeout", type=float, default=10.0, show_default=True, help="Seconds to open the source.")
@click.option("--read-timeout", type=float, default=5.0, show_default=True, help="Seconds without data = a stall.")
@click.option("--retry-seconds", type=float, default=30.0, show_default=True,
              help="How long a lost live source is retried (with back-off) before giving up.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--no-stdin", is_flag=True, help="Do not read questions from stdin.")
@_user_errors(interrupted="interrupted")
def watch(folder, source, question, ask_every, seconds, ratio, backend, target, device, context_policy,
          window_seconds, events, view, realtime, fmt, audio, require_audio, queue, drop_policy, max_lag,
          open_timeout, read_timeout, retry_seconds, max_new_tokens, no_stdin):
    """Watch a live SOURCE (rtsp://, udp://, tcp://, http(s)://, srt://, /dev/videoN, or a file with
    --realtime) through the export in FOLDER, answering questions while it runs (docs/live.md)."""
    from omnisift_edge.live import run
    from omnisift_edge.live.source import SourceConfig
    from omnisift_edge.live.watch import WatchConfig
    from omnisift_edge.runtime.session import RuntimeConfig

    cfg = WatchConfig(
        runtime=RuntimeConfig(folder=folder, backend=backend, ratio=ratio, device=device, target=target,
                              context_policy=context_policy, window_seconds=window_seconds),
        source=SourceConfig(url=source, realtime=realtime, format=fmt, audio=audio, require_audio=require_audio,
                            open_timeout=open_timeout, read_timeout=read_timeout, retry_seconds=retry_seconds),
        question=question, ask_every=ask_every, seconds=seconds, events=events, view=view, queue=queue,
        drop_policy=drop_policy, max_lag=max_lag, max_new_tokens=max_new_tokens, stdin=not no_stdin)
    report = run(cfg, text=lambda piece: click.echo(piece, nl=False),
                 progress=lambda line: click.echo(line, err=True))
    s = report.summary()
    click.echo(f"{s['processed']} chunks processed, {s['dropped']} dropped, {s['partial']} partial, "
               f"{s['reconnects']} reconnects; lag p50 {s['lag_ms_p50']:.0f} ms, p95 {s['lag_ms_p95']:.0f} ms; "
               f"{len(report.answers)} answers ({s['reason']})", err=True)
