"""Serving: returned files outlive concurrent predictions (library and Cog server, on a single-slot model),
and MUSICGEN_DEVICE=cuda serves on a GPU or refuses to start with one sentence."""

from __future__ import annotations

import hashlib
import threading

import pytest

from conftest import in_threads
from http_helpers import CogServer, request
from musicgen import GenerationRequest, MusicGen, MusicGenError

NO_GPU = "MUSICGEN_DEVICE=cuda but PyTorch sees no GPU"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _together(call, items: list) -> list:
    """``call`` on every item at once: each in its own thread, released together."""
    barrier = threading.Barrier(len(items), timeout=60)

    def one(i):
        barrier.wait()
        return call(items[i])

    return in_threads(one, len(items))


def test_four_callers_on_one_slot_each_keep_their_whole_file_until_later_ones_return(checkpoints):
    model = MusicGen.load(checkpoints["plain"], device="cpu", concurrency=1)
    try:
        assert model.scheduler.slots == 1
        model.outputs.grace_s = 0.0  # only the count of later returns protects a file here
        requests = [GenerationRequest(prompt=f"take {i}", duration=1 + i % 2, seed=i) for i in range(4)]
        alone = [_sha(model.predict(r).paths[0]) for r in requests]
        results = _together(model.predict, requests)
        paths = [r.paths[0] for r in results]
        assert [_sha(p) for p in paths] == alone  # every file exists, whole, once all four have returned
        assert len({p.parent for p in paths}) == 4 and all(len(list(p.parent.iterdir())) == 1 for p in paths)
        # disk stays bounded: four later predictions (as many as were ever in flight) let them go
        later = [model.predict(GenerationRequest(duration=1, seed=10 + i)).paths[0] for i in range(4)]
        assert [p.exists() for p in paths + later] == [False] * 4 + [True] * 4
    finally:
        model.release_outputs()


def test_a_returned_file_is_kept_for_the_grace_period_however_many_come_after(plain_predictor):
    service = plain_predictor.musicgen
    assert service.outputs.grace_s >= 60  # Cog sends a returned file after predict returns
    first = service.predict(GenerationRequest(duration=1, seed=1)).paths[0]
    for i in range(service.outputs.keep + 2):
        service.predict(GenerationRequest(duration=1, seed=2 + i))
    assert first.is_file()
    service.release_outputs()
    assert not first.parent.exists()


def test_the_cog_server_with_one_slot_and_four_predictions_at_once_returns_every_file(checkpoints):
    server = CogServer(checkpoints["plain"], extra_env={"COG_MAX_CONCURRENCY": "4", "MUSICGEN_CONCURRENCY": "1"})
    try:
        assert server.wait_health()["status"] == "READY"
        inputs = [{"prompt": f"take {i}", "duration": 1 + i % 2, "seed": i} for i in range(4)]
        alone = [server.predict(x)[1] for x in inputs]
        assert all(body["status"] == "succeeded" for body in alone), alone
        together = _together(lambda x: server.predict(x, retries_409=30), inputs)
        for (status, body), expected in zip(together, alone):
            assert status == 200 and body["status"] == "succeeded", body
            assert body["output"][0] == expected["output"][0]  # the whole file, as a data: URI
        assert "FileNotFoundError" not in server.logs()
    finally:
        server.stop()


def test_cuda_without_a_gpu_is_refused_by_the_library_with_one_sentence(checkpoints):
    with pytest.raises(MusicGenError) as err:
        MusicGen.load(checkpoints["plain"], device="cuda")
    text = str(err.value)  # said with the parameter the caller used
    assert text.startswith(NO_GPU.replace("MUSICGEN_DEVICE=", "device=")) and "NVIDIA driver 580 or newer" in text
    assert "not V100" in text and text.endswith("set device=cpu.")


def test_cuda_without_a_gpu_fails_the_cog_servers_setup_with_the_sentence(checkpoints):
    server = CogServer(checkpoints["plain"], extra_env={"MUSICGEN_DEVICE": "cuda"})
    try:
        health = server.wait_health()
        assert health["status"] == "SETUP_FAILED"
        assert NO_GPU in health["setup"]["logs"] and "set MUSICGEN_DEVICE=cpu." in health["setup"]["logs"]
        assert request("POST", server.url + "/predictions", {"input": {"prompt": "x"}})[0] == 503
    finally:
        server.stop()


def test_each_windows_melody_chroma_is_computed_in_the_requests_thread(melody_predictor, audio_files, monkeypatch):
    from musicgen.engine.engine import WindowSettings

    engine = melody_predictor.musicgen.engine
    monkeypatch.setattr(engine, "windows", WindowSettings(window_s=2.0, stride_s=1.2))  # 3 s: two windows
    threads, chroma = [], engine.melody_chroma

    def watched(*args):
        threads.append(threading.current_thread().name)
        return chroma(*args)

    monkeypatch.setattr(engine, "melody_chroma", watched)
    windows = []
    melody_predictor.musicgen.predict(GenerationRequest(prompt="folk", input_audio=audio_files["wav"],
                                                        duration=3, seed=5), on_window=windows.append)
    assert len(windows) == 2 and threads == [threading.current_thread().name] * 2  # never the decode loop's
    assert all(w.melody_chroma is not None for w in windows)
    assert not windows[0].melody_chroma.equal(windows[1].melody_chroma)  # each at its own place in time
