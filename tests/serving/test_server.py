"""A real tritonserver (nvidia-pytriton's binary) serving the generated repository over gRPC.

One export of the embedded default and one server for the module (started and always stopped
here, on 127.0.0.1 and free ports). Camera streams run concurrently through tritonclient and
must get exactly what an in-process OmniSession gets from the same chunks.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is missing: pip install 'omnisift-edge[serve]'")

from omnisift_edge.errors import UsageError  # noqa: E402
from omnisift_edge.model.synthetic import synthetic_clip  # noqa: E402
from omnisift_edge.runtime.session import OmniSession, RuntimeConfig  # noqa: E402
from omnisift_edge.serving.client import CameraClient, RequestError  # noqa: E402

from tests.serving.conftest import RES  # noqa: E402
# seconds: the repository's idle timeout, as short as this test allows. Triton counts a request's time
# in the model as idle time, and four cameras opening sessions at once (~1.5 s each, one after another
# in the model instance) take ~6 s on a loaded 2-core machine: shorter would drop the last of them.
IDLE = 8.0
QUESTION = "What happens in the video?"


@pytest.fixture(scope="module")
def export_folder(serving_export):
    return serving_export


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    from omnisift_edge.serving.local import find_bundled_server, start_local_server
    from omnisift_edge.serving.repository import TritonConfig, triton

    try:
        find_bundled_server()
    except UsageError as exc:
        pytest.skip(str(exc))
    export_folder = request.getfixturevalue("export_folder")      # only once the server exists
    repo = triton(TritonConfig(export=export_folder, out=tmp_path_factory.mktemp("repo") / "models",
                               max_streams=8, idle_timeout=IDLE))
    running = start_local_server(repo.folder, ready_timeout=120)
    try:
        yield running
    finally:
        running.stop()


def _pieces(clip, step: int):
    """The clip as (frames, pcm) requests of `step` frames each."""
    per_frame = 16000 // 2
    return [(clip.frames[j:j + step], clip.pcm[j * per_frame:(j + step) * per_frame])
            for j in range(0, len(clip.frames), step)]


def _in_process(folder, clip, step: int, max_new_tokens: int):
    session = OmniSession(RuntimeConfig(folder))
    for frames, pcm in _pieces(clip, step):
        session.append_chunk(frames, pcm)
    text = "".join(session.ask(QUESTION, max_new_tokens=max_new_tokens))
    return [(r.kept_video, r.kept_audio) for r in session.reports], list(session.last_answer_ids), text


def _over_triton(url, sequence_id, clip, step: int, max_new_tokens: int):
    camera = CameraClient(url, sequence_id)
    try:
        kept = []
        for frames, pcm in _pieces(clip, step):
            kept += camera.chunk(frames, pcm).kept
        answer = camera.ask(QUESTION, max_new_tokens=max_new_tokens)
        camera.end()
        return kept + answer.kept, answer.token_ids, answer.text, answer.pieces
    finally:
        camera.close()


def test_four_concurrent_cameras_get_the_in_process_answers(server, export_folder):
    # cameras differ in content, length and how they split the media into requests
    plans = {101: (4.0, 4), 102: (5.0, 3), 103: (6.0, 4), 104: (3.0, 1)}
    clips = {sid: synthetic_clip(seconds, *RES, seed=sid) for sid, (seconds, _) in plans.items()}
    got, errors = {}, []

    def camera(sid):
        try:
            got[sid] = _over_triton(server.grpc_url, sid, clips[sid], plans[sid][1], max_new_tokens=6)
        except Exception as exc:        # re-raised below, with the server log
            errors.append(exc)

    threads = [threading.Thread(target=camera, args=(sid,)) for sid in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, f"{errors!r}\n{server.log()[-3000:]}"
    for sid, (seconds, step) in plans.items():
        kept, ids, text = _in_process(export_folder, clips[sid], step, max_new_tokens=6)
        served_kept, served_ids, served_text, pieces = got[sid]
        assert served_kept == kept and len(kept) == -(-int(seconds * 2) // 4)
        assert served_ids == ids and len(ids) > 0
        assert served_text == text == "".join(pieces)


def test_a_vanished_camera_does_not_disturb_others_and_is_freed(server, export_folder):
    clip = synthetic_clip(5.0, *RES, seed=7)
    gone = CameraClient(server.grpc_url, 201)
    gone.chunk(*_pieces(clip, 4)[0])
    gone.close()                                     # no END: the client vanished mid-stream
    steady = CameraClient(server.grpc_url, 202)
    try:
        held, kept = [], []
        for frames, pcm in _pieces(clip, 2):         # 5 requests, IDLE / 2 apart: past 1.5 x IDLE + the reaper
            reply = steady.chunk(frames, pcm)
            held.append(reply.open_streams)
            kept += reply.kept
            time.sleep(IDLE / 2)
        answer = steady.ask(QUESTION, max_new_tokens=4)
        steady.end()
    finally:
        steady.close()
    assert held[0] == 2 and held[-1] == 1, held      # the vanished camera's session was freed, steady's kept
    want_kept, want_ids, _ = _in_process(export_folder, clip, 2, max_new_tokens=4)
    assert kept + answer.kept == want_kept and answer.token_ids == want_ids
    late = CameraClient(server.grpc_url, 201)
    try:
        with pytest.raises(RequestError, match="START"):        # the server forgot sequence 201
            late.request(start=False, FRAMES=clip.frames[4:8], PCM=clip.pcm[32000:64000])
    finally:
        late.close()


def _raw(name, value, datatype):
    from tritonclient.grpc import InferInput

    tensor = InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def test_bad_requests_get_an_error_and_the_server_keeps_serving(server, export_folder):
    clip = synthetic_clip(2.0, *RES, seed=9)
    frames, pcm = clip.frames[:4], clip.pcm[:32000]
    camera = CameraClient(server.grpc_url, 301)
    try:
        with pytest.raises(RequestError, match="no media yet"):                  # a question before any chunk
            camera.ask(QUESTION)
        with pytest.raises(RequestError, match="FRAMES"):                        # wrong frame size
            camera.send([_raw("FRAMES", np.zeros((4, 64, 64, 3), np.uint8), "UINT8"), _raw("PCM", pcm, "FP32")])
        with pytest.raises(RequestError, match="FRAMES|data-type|datatype"):     # wrong dtype
            camera.send([_raw("FRAMES", frames.astype(np.float32), "FP32"), _raw("PCM", pcm, "FP32")])
        with pytest.raises(RequestError, match="both FRAMES .* and PCM"):        # half a chunk
            camera.send([_raw("FRAMES", frames, "UINT8")])
        stranger = CameraClient(server.grpc_url, 399)
        try:
            with pytest.raises(RequestError, match="START"):                     # an unknown sequence
                stranger.request(start=False, FRAMES=frames, PCM=pcm)
        finally:
            stranger.close()
        assert camera.chunk(frames, pcm).open_streams >= 1                       # this stream still works
        answer = camera.ask(QUESTION, max_new_tokens=3)
        camera.end()
    finally:
        camera.close()
    _, ids, _ = _in_process(export_folder, clip, 4, max_new_tokens=3)
    assert answer.token_ids == ids
