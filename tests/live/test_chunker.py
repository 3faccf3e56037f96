"""live/chunker.py: 2 fps sampling by timestamp, audio on the video's clock, the bounded queue's policies."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from omnisift_edge.live.chunker import SEPARATE_AUDIO_WAIT, Chunk, ChunkAssembler, ChunkQueue

av = pytest.importorskip("av")


def _frame(value: int, w: int = 56, h: int = 56):
    return av.VideoFrame.from_ndarray(np.full((h, w, 3), value, np.uint8), format="rgb24")


def _chunk(index: int) -> Chunk:
    return Chunk(index, 2.0 * index, np.zeros((4, 28, 28, 3), np.uint8), np.zeros(32000, np.float32), 0.0)


def test_frames_are_sampled_at_2fps_by_timestamp_and_audio_fills_its_window():
    asm = ChunkAssembler((56, 56))
    chunks = []
    for i in range(45):                                   # 10 fps from t = 5.0 (the stream clock's origin)
        chunks += asm.video(5.0 + i / 10, _frame(i))
        if i % 2 == 0:                                    # 0.2 s audio blocks, each timestamped
            chunks += asm.audio_block(5.0 + i / 10, np.full(3200, i / 100, np.float32))
    assert [c.index for c in chunks] == [0, 1]
    # frame k shows t = k / 2: decoded frame 5k (value 5k, resize keeps a flat colour)
    assert [int(f[0, 0, 0]) for f in chunks[0].frames] == [0, 5, 10, 15]
    assert [int(f[0, 0, 0]) for f in chunks[1].frames] == [20, 25, 30, 35]
    assert chunks[1].start == 2.0 and chunks[0].pcm.shape == (32040,)
    assert chunks[1].pcm[0] == pytest.approx(0.20)        # the block stamped t = 2.0 starts chunk 1


def test_audio_that_drifts_is_realigned_to_its_timestamps():
    asm = ChunkAssembler((56, 56))
    asm.video(0.0, _frame(0))
    asm.audio_block(0.0, np.ones(8000, np.float32))       # 0.0-0.5 s
    asm.audio_block(0.6, np.ones(8000, np.float32))       # 100 ms late: silence fills 0.5-0.6 s
    asm.audio_block(1.05, np.ones(8000, np.float32))      # 50 ms early: its first 800 samples are dropped
    asm.audio_block(1.52, np.ones(8000, np.float32))      # 20 ms late: within the limit, appended as is
    chunks = []
    for i in range(1, 25):
        chunks += asm.video(i / 10, _frame(i))
    pcm = chunks[0].pcm
    assert pcm[:8000].min() == 1 and pcm[8000:9600].max() == 0 and pcm[9600:16800].min() == 1
    assert len(pcm) == 32040 and pcm[16800:24800].min() == 1    # no accumulated offset: 1.05 s block ends at 1.55 s


def test_a_source_without_audio_gets_silence_and_a_size_change_is_rescaled_once():
    notices = []
    asm = ChunkAssembler((56, 28), notice=notices.append, silent=True)
    chunks = []
    for i in range(21):
        chunks += asm.video(i / 10, _frame(100, *((56, 56) if i < 10 else (84, 112))))
    assert len(chunks) == 1 and chunks[0].frames.shape == (4, 56, 28, 3) and not chunks[0].pcm.any()
    assert len(notices) == 1 and "changed to 84x112" in notices[0]


def test_oldest_policy_drops_the_oldest_queued_chunk():
    q = ChunkQueue(2, "oldest")
    dropped = [c.index for i in range(5) for c in q.put(_chunk(i))]
    assert dropped == [0, 1, 2] and [c.index for c in q.items] == [3, 4] and q.dropped == 3


def test_thin_policy_spreads_what_it_keeps():
    q = ChunkQueue(3, "thin")
    dropped = [c.index for i in range(7) for c in q.put(_chunk(i))]
    # [0,1,2] + 3: spans 1:(0..2)=4, 2:(1..3)=4 -> drop 1 (older on a tie); [0,2,3] + 4: 2:(0..3)=6, 3:(2..4)=4 -> 3
    assert dropped == [1, 3, 4, 5] and [c.index for c in q.items] == [0, 2, 6]


def test_block_waits_for_room_and_get_times_out_when_empty():
    q = ChunkQueue(1, "oldest", block=True)
    q.put(_chunk(0))
    done = threading.Event()
    threading.Thread(target=lambda: (q.put(_chunk(1)), done.set()), daemon=True).start()
    assert not done.wait(0.3)                             # full: the producer waits, nothing is dropped
    assert q.get(timeout=1)[0].index == 0 and done.wait(2) and q.dropped == 0
    assert q.get(timeout=1)[0].index == 1 and q.get(timeout=0.05) == (None, [])
    q.end()
    assert q.done


def test_chunks_waiting_past_max_age_are_dropped_as_stale():
    q = ChunkQueue(3, "oldest")
    for i, age in enumerate((5.0, 4.0, 0.5)):
        chunk = _chunk(i)
        chunk.captured = time.monotonic() - age
        q.put(chunk)
    chunk, stale = q.get(timeout=1, max_age=3.0)
    assert chunk.index == 2 and [c.index for c in stale] == [0, 1] and q.dropped == 2


def test_bad_queue_settings_are_one_line():
    from omnisift_edge.errors import UsageError

    with pytest.raises(UsageError, match="--drop-policy"):
        ChunkQueue(2, "newest")
    with pytest.raises(UsageError, match="--queue"):
        ChunkQueue(0)


def test_a_separate_audio_input_fills_the_chunks_of_a_silent_video_stream():
    """Two real UDP streams (video only, audio only) through LiveSource + Capture, as `--audio URL` runs them."""
    from omnisift_edge.live.capture import Capture
    from omnisift_edge.live.source import LiveSource, SourceConfig
    from tests.live.conftest import free_port, udp_stream

    vport, aport = free_port(), free_port()
    with udp_stream(vport, video=True, audio=False), udp_stream(aport, video=False, audio=True):
        cfg = SourceConfig(f"udp://127.0.0.1:{vport}", audio=f"udp://127.0.0.1:{aport}", read_timeout=2)
        video = LiveSource(cfg).open()
        audio = LiveSource(cfg.audio_input(), video=False).open()
        assert not video.has_audio and audio.has_audio
        queue = ChunkQueue(4, "oldest")
        capture = Capture(video, ChunkAssembler((56, 56), audio_wait=SEPARATE_AUDIO_WAIT), queue, lambda event: None, max_chunks=3, audio=audio)
        capture.start()
        capture.join(timeout=40)
    chunks = [queue.get(timeout=1)[0] for _ in range(3)]
    assert not capture.is_alive() and capture.error is None and [c.index for c in chunks] == [0, 1, 2]
    for chunk in chunks[1:]:                              # the 440 Hz tone, not silence (the first may start late)
        assert (np.abs(chunk.pcm[:32000]).reshape(-1, 160).max(axis=1) > 0.05).mean() > 0.8


def test_audio_inputs_name_their_device():
    from omnisift_edge.live.source import SourceConfig

    alsa = SourceConfig("/dev/video0", audio="alsa:hw:1,0").audio_input()
    assert (alsa.url, alsa.format, alsa.kind, alsa.require_audio) == ("hw:1,0", "alsa", "device", True)
    url = SourceConfig("rtsp://cam/1", audio="udp://127.0.0.1:5000").audio_input()
    assert (url.url, url.format, url.kind) == ("udp://127.0.0.1:5000", None, "network")
