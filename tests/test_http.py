"""The predictor behind Cog's real HTTP server (coglet) on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, in_threads, readme_block, tone
from http_helpers import ROOT, CogServer, Receiver, free_port, request


def wav_bytes(data: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def data_uri(payload: bytes, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def decode_output(uri: str) -> tuple[np.ndarray, int]:
    if uri.startswith("data:"):
        raw = base64.b64decode(uri.split(",", 1)[1])
    else:
        with urllib.request.urlopen(uri, timeout=30) as resp:
            raw = resp.read()
    data, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    return data.T, sr


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(checkpoints):
    s = CogServer(checkpoints["melody"], extra_env={"MUSICGEN_METRICS_PORT": str(free_port())})
    try:
        s.wait_health()
        yield s
    finally:
        s.stop()


def assert_ready(server, settle: float = 5.0):
    """READY, allowing coglet a moment to release the slot of a prediction that just ended."""
    deadline = time.monotonic() + settle
    while True:
        status, health = request("GET", server.url + "/health-check")
        if (status == 200 and health["status"] == "READY") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and health["status"] == "READY", health


# ---------------------------------------------------------------- health and schema
def test_health_is_ready_and_schema_is_served(server):
    assert_ready(server)
    status, schema = request("GET", server.url + "/openapi.json")
    assert status == 200
    on_disk = json.loads((ROOT / ".cog" / "openapi_schema.json").read_text())
    assert schema["components"]["schemas"]["Input"] == on_disk["components"]["schemas"]["Input"]


def test_setup_failed_with_clear_sentence_when_weights_are_missing(tmp_path):
    s = CogServer(tmp_path / "no-weights-here")
    try:
        health = s.wait_health()
        assert health["status"] == "SETUP_FAILED"
        assert f"No MusicGen checkpoint found in {tmp_path / 'no-weights-here'}" in health["setup"]["logs"]
        assert "make weights" in health["setup"]["logs"]
        status, _ = request("POST", s.url + "/predictions", {"input": {"prompt": "x"}})
        assert status == 503
    finally:
        s.stop()


def test_without_separation_weights_the_server_is_ready_and_only_melody_requests_fail(checkpoints, tmp_path):
    s = CogServer(checkpoints["melody"], extra_env={"MUSICGEN_STEMS_WEIGHTS": str(tmp_path / "no-stems")})
    try:
        assert s.wait_health()["status"] == "READY"
        melody = data_uri(wav_bytes(tone([261.63, 392.0], 3.0)))
        status, body = s.predict({"input_audio": melody, "duration": 1})
        assert status == 200 and body["status"] == "failed", body
        assert f"Following a melody needs the htdemucs stem separation bag (adefossez/HTDemucs), which is not usable in {tmp_path / 'no-stems'}" in body["error"]
        assert "MUSICGEN_MELODY_STEMS=0" in body["error"] and "Traceback" not in body["error"]
        assert_ready(s)
        status, body = s.predict({"prompt": "jazz", "duration": 1, "seed": 1})
        assert status == 200 and body["status"] == "succeeded", body
    finally:
        s.stop()


# ---------------------------------------------------------------- sync predictions
def test_sync_text_prediction(server):
    status, body = server.predict({"prompt": "lofi beat", "duration": 2, "seed": 1})
    assert status == 200 and body["status"] == "succeeded", body
    assert isinstance(body["output"], list) and len(body["output"]) == 1
    wav, sr = decode_output(body["output"][0])
    assert sr == SR and wav.shape == (1, 2 * SR)
    assert "seed 1" in body["logs"] and "model melody" in body["logs"]
    assert re.search(r"generating: [\d.]+/2\.0 s of music", body["logs"]) and "generation " in body["logs"]


def test_sync_melody_from_data_uri(server):
    melody = wav_bytes(tone([261.63, 392.0], 3.0))
    status, body = server.predict({"prompt": "piano", "input_audio": data_uri(melody), "duration": 2,
                                   "seed": 2, "output_format": "mp3"})
    assert status == 200 and body["status"] == "succeeded", body
    wav, sr = decode_output(body["output"][0])
    assert sr == SR and abs(wav.shape[1] - 2 * SR) <= 1152


def test_the_readmes_sync_requests_run_as_written(server, tmp_path):
    """The README's first HTTP block, run by bash and curl against the real server: a text request, then a
    melody from a 10 s clip, whose base64 (over the 128 KB a command-line argument may hold) goes in a body
    file."""
    sf.write(tmp_path / "melody.wav", tone([261.63, 392.0], 10.0), SR, subtype="PCM_16")
    assert (tmp_path / "melody.wav").stat().st_size * 4 / 3 > 128 * 1024
    script = readme_block("@body.json").replace("http://127.0.0.1:5000", server.url)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    bodies, text, decoder = [], done.stdout.strip(), json.JSONDecoder()
    while text:  # curl prints one JSON body per request, back to back
        body, end = decoder.raw_decode(text)
        bodies.append(body)
        text = text[end:].lstrip()
    assert [b["status"] for b in bodies] == ["succeeded", "succeeded"], bodies
    for body in bodies:
        wav, sr = decode_output(body["output"][0])
        assert sr == SR and wav.shape == (1, 8 * SR)
    assert "seed 42" in bodies[0]["logs"] and "melody: reading up to" in bodies[1]["logs"]


def test_sync_continuation_from_http_url(server, receiver):
    receiver.files["/clip.wav"] = wav_bytes(tone([440.0, 330.0], 4.0))
    status, body = server.predict({"input_audio": receiver.url + "/clip.wav", "continuation": True,
                                   "continuation_start": 1, "continuation_end": 3, "duration": 4, "seed": 3})
    assert status == 200 and body["status"] == "succeeded", body
    wav, sr = decode_output(body["output"][0])
    assert wav.shape == (1, 4 * SR)  # duration is the whole clip, the 2 s prompt included


PROMPT_TOO_LONG = ("The continuation prompt (10.00 s of input_audio) must be shorter than duration (8 s), which is "
                   "the length of the whole output, prompt included; set duration to 11 or more, or choose a "
                   "shorter part with continuation_start and continuation_end.")


def test_continuation_duration_is_the_whole_output_prompt_included(server):
    clip = data_uri(wav_bytes(tone([440.0, 330.0], 3.0)))
    status, body = server.predict({"input_audio": clip, "continuation": True, "duration": 8, "seed": 5})
    assert status == 200 and body["status"] == "succeeded", body
    assert decode_output(body["output"][0])[0].shape == (1, 8 * SR)  # 8.000 s: the 3 s prompt and 5 s new
    longer = data_uri(wav_bytes(tone([440.0, 330.0], 10.0)))
    status, body = server.predict({"input_audio": longer, "continuation": True, "duration": 8, "seed": 5})
    assert status == 200 and body["status"] == "failed", body
    assert body["error"].endswith(PROMPT_TOO_LONG) and "Traceback" not in body["error"]


# ---------------------------------------------------------------- validation and failures
@pytest.mark.parametrize("inputs,field", [
    ({"duration": 0}, "duration"),
    ({"duration": 301}, "duration"),
    ({"normalization_strategy": "louder"}, "normalization_strategy"),
    ({"top_k": "many"}, "top_k"),
    ({"seed": -2}, "seed"),
])
def test_schema_violations_are_422(server, inputs, field):
    status, body = server.predict(inputs)
    assert status == 422, body
    assert any(d["loc"][-1] == field for d in body["detail"]), body


@pytest.mark.parametrize("inputs,sentence", [
    ({"continuation": True}, "continuation=true needs input_audio: upload the clip to continue, or set continuation=false."),
    ({"continuation": True, "continuation_start": 3, "continuation_end": 2, "input_audio": "AUDIO"},
     "continuation_end (2 s) must be after continuation_start (3 s); use -1 for the end of the clip."),
    ({"continuation": True, "input_audio": "TEXT"},
     "input_audio could not be decoded as audio; upload a complete wav, mp3, flac, ogg/vorbis, opus, m4a/aac or aiff file."),
    ({"input_audio": "just a string"}, "input_audio must be an uploaded audio file (a file or URL), not a plain string"),
])
def test_user_errors_fail_with_one_sentence_and_server_stays_ready(server, inputs, sentence):
    inputs = dict(inputs, duration=1)
    if inputs.get("input_audio") == "AUDIO":
        inputs["input_audio"] = data_uri(wav_bytes(tone([440.0], 4.0)))
    elif inputs.get("input_audio") == "TEXT":
        inputs["input_audio"] = data_uri(b"definitely not audio\n" * 50, "text/plain")
    status, body = server.predict(inputs)
    assert status == 200 and body["status"] == "failed", body
    assert sentence in body["error"]
    assert "Traceback" not in body["error"]
    assert_ready(server)
    status, body = server.predict({"duration": 1, "seed": 1})
    assert body["status"] == "succeeded", body


def _listening(port: int) -> list[str]:
    """The local addresses (IPv4 hex, as /proc/net/tcp writes them) listening on ``port``."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [row[1].split(":")[0] for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "0A"]


def _failed_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('musicgen_requests_total{outcome="failed"}'))


def test_what_a_client_sees_of_typos_and_refused_inputs_and_what_the_metrics_count(server):
    """docs/api.md, "Errors": a misspelt input is dropped by Cog's server (logged, the defaults run); a refused
    input's `error` is Cog's prefix and our one sentence; every refusal that reaches the predictor is counted
    as failed, and the metrics listen on loopback only."""
    port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log_path.read_text()).group(1))
    assert _listening(port) == ["0100007F"]  # 127.0.0.1, no other interface
    before = _failed_total(port)
    status, body = server.predict({"durration": 2, "seed": 1})
    assert status == 200 and body["status"] == "succeeded", body
    assert decode_output(body["output"][0])[0].shape == (1, 8 * SR)  # the default duration ran
    assert re.search(r"Stripped unknown input fields.*durration", server.log_path.read_text())
    refused = [
        ({"continuation": True, "duration": 1},  # refused as the request is built
         "continuation=true needs input_audio: upload the clip to continue, or set continuation=false."),
        ({"continuation": True, "continuation_start": 3, "continuation_end": 2, "duration": 1,
          "input_audio": data_uri(wav_bytes(tone([440.0], 4.0)))},
         "continuation_end (2 s) must be after continuation_start (3 s); use -1 for the end of the clip."),
        ({"continuation": True, "duration": 1, "input_audio": data_uri(b"definitely not audio\n" * 50, "text/plain")},
         "input_audio could not be decoded as audio; upload a complete wav, mp3, flac, ogg/vorbis, opus, m4a/aac "
         "or aiff file."),  # refused while it runs
    ]
    for inputs, sentence in refused:
        status, body = server.predict(inputs)
        assert status == 200 and body["status"] == "failed", body
        assert body["error"] == "Prediction failed: Async prediction failed: MusicGenError: " + sentence
    assert _failed_total(port) - before == len(refused)


def test_explicit_null_means_not_given(server):
    nulls = {"prompt": None, "input_audio": None, "continuation_end": None, "seed": None}
    status, body = server.predict({**nulls, "duration": 1})
    assert status == 200 and body["status"] == "succeeded", body
    assert decode_output(body["output"][0])[0].shape == (1, SR)
    assert re.search(r"seed \d+", body["logs"])  # a random seed was drawn and logged


def test_integral_numbers_for_integer_inputs_are_accepted_and_fractions_refused(server):
    status, body = server.predict({"duration": 2.0, "seed": 3.0, "top_k": 50.0})
    assert status == 200 and body["status"] == "succeeded", body
    assert decode_output(body["output"][0])[0].shape == (1, 2 * SR) and "seed 3" in body["logs"]
    status, body = server.predict({"duration": 2.5})
    assert status == 422 and body["detail"][0]["loc"][-1] == "duration", body


def _worker_memory_kib(server) -> tuple[int, int]:
    """(current RSS, peak RSS) of coglet's Python worker, the process that runs predict()."""
    def children(pid):
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    pids, workers = [server.proc.pid], []
    while pids:
        pid = pids.pop()
        kids = children(pid)
        pids += kids
        workers += [k for k in kids if b"coglet" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert len(workers) == 1, workers
    status = dict(line.split(":", 1) for line in Path(f"/proc/{workers[0]}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def test_hostile_requests_are_refused_and_memory_stays_bounded(server):
    status, body = server.predict({"prompt": "warm up", "duration": 2, "seed": 1})
    assert body["status"] == "succeeded", body
    rss_before, peak_before = _worker_memory_kib(server)
    hostile = [
        ({"prompt": "x" * 1_000_000, "duration": 1}, "prompt is 1000000 characters long, far more than the 512 tokens"),
        ({"prompt": "lofi hip hop beat with soft drums " * 600, "duration": 1}, "more than the 512 tokens"),
        ({"prompt": "jazz " * 4000, "duration": 1}, "more than the 512 tokens"),
    ]
    for _ in range(3):
        for inputs, sentence in hostile:
            status, body = server.predict(inputs)
            assert status == 200 and body["status"] == "failed" and sentence in body["error"], body
        for inputs in ({"temperature": 1e-320, "duration": 1}, {"classifier_free_guidance": 10**9, "duration": 1},
                       {"temperature": 1e300, "duration": 1}):
            status, body = server.predict(inputs)
            assert status == 200 and body["status"] == "succeeded", body
    assert_ready(server)
    rss_after, peak_after = _worker_memory_kib(server)
    assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)  # KiB: no growth left behind
    assert peak_after - peak_before < 200 * 1024, (peak_before, peak_after)  # and no spike on the way


# ---------------------------------------------------------------- async, webhooks, cancel, concurrency
def _events_for(receiver, pid):
    return [p for p in receiver.posts if p and p.get("id") == pid]


def test_async_prediction_sends_webhooks(server, receiver):
    pid = "async-" + uuid.uuid4().hex[:8]
    status, body = server.predict({"prompt": "jazz", "duration": 1, "seed": 4}, headers={"Prefer": "respond-async"},
                                  prediction_id=pid, webhook=receiver.url + "/hook")
    assert status == 202, body
    # coglet posts webhooks concurrently, so they may arrive out of order: wait for both ends, by status
    receiver.wait_for(lambda: {"succeeded"} <= {e["status"] for e in _events_for(receiver, pid)}
                      and any(e["status"] in ("starting", "processing") for e in _events_for(receiver, pid)))
    events = _events_for(receiver, pid)
    finals = [e for e in events if e["status"] == "succeeded"]
    assert len(finals) == 1, [e["status"] for e in events]
    assert {e["status"] for e in events} <= {"starting", "processing", "succeeded"}
    final = finals[0]
    wav, sr = decode_output(final["output"][0])
    assert wav.shape == (1, SR)


def test_webhook_events_filter_is_honoured(server, receiver):
    pid = "filtered-" + uuid.uuid4().hex[:8]
    status, _ = server.predict({"duration": 1, "seed": 5}, headers={"Prefer": "respond-async"}, prediction_id=pid,
                               webhook=receiver.url + "/hook", events=["completed"])
    assert status == 202
    receiver.wait_for(lambda: any(e["status"] == "succeeded" for e in _events_for(receiver, pid)))
    assert_ready(server)  # the prediction is over: no later event can still arrive
    assert [e["status"] for e in _events_for(receiver, pid)] == ["succeeded"]


def test_cancel_stops_generation_and_next_request_succeeds(server, receiver):
    pid = "cancel-" + uuid.uuid4().hex[:8]
    status, _ = server.predict({"duration": 300, "seed": 6}, headers={"Prefer": "respond-async"}, prediction_id=pid,
                               webhook=receiver.url + "/hook")
    assert status == 202
    # wait until decoding has really started, then cancel
    receiver.wait_for(lambda: any("generating:" in (e.get("logs") or "") for e in _events_for(receiver, pid)))
    status, _ = request("POST", f"{server.url}/predictions/{pid}/cancel")
    assert status == 200
    receiver.wait_for(lambda: any(e["status"] == "canceled" for e in _events_for(receiver, pid)), timeout=60)
    final = [e for e in _events_for(receiver, pid) if e["status"] == "canceled"][-1]
    done, total = map(float, re.findall(r"generating: ([\d.]+)/([\d.]+) s of music", final["logs"])[-1])
    assert done < total == 300  # it stopped mid-generation instead of running to the end
    # and the decode loop really let it go (Cog reports `canceled` at once, whatever the worker does)
    deadline = time.monotonic() + 30
    while "request cancelled after" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    left, planned = map(int, re.findall(r"request cancelled after (\d+) of (\d+) steps", server.logs())[-1])
    assert left < planned
    status, body = server.predict({"duration": 1, "seed": 7}, retries_409=30)
    assert status == 200 and body["status"] == "succeeded", body


def test_second_concurrent_request_gets_409(server):
    results = {}

    def long_request():
        results["first"] = server.predict({"duration": 30, "seed": 8}, retries_409=0)

    worker = threading.Thread(target=long_request)
    worker.start()
    try:
        for _ in range(600):  # until the first one holds the slot
            if request("GET", server.url + "/health-check")[1]["status"] == "BUSY":
                break
            threading.Event().wait(0.05)
        status, body = request("POST", server.url + "/predictions", {"input": {"duration": 1}})
        assert status == 409, body
    finally:
        worker.join(timeout=300)
    status, body = results["first"]
    assert status == 200 and body["status"] == "succeeded", body
    assert decode_output(body["output"][0])[0].shape == (1, 30 * SR)


def test_make_serve_takes_the_images_concurrency_and_writes_readable_logs(checkpoints):
    """`make serve` (scripts/serve.sh runs musicgen_dev.serve): as many predictions at once as the image
    (cog.yaml's concurrency.max), decoded in the device's slots (2 on a CPU), and one readable line per log
    event, not JSON (docs/deployment.md, "The HTTP server")."""
    s = CogServer(checkpoints["plain"], make_serve=True)
    try:
        health = s.wait_health()
        assert health["status"] == "READY", s.logs()
        results = in_threads(lambda i: s.predict({"prompt": "duet", "duration": 2, "seed": i}, retries_409=0), 3)
        assert [(status, body["status"]) for status, body in results] == [(200, "succeeded")] * 3, results
        log = s.log_path.read_text(errors="replace")
        assert "up to 8 predictions at once (COG_MAX_CONCURRENCY)" in log and "decoding up to 2 request(s) at once" in log
        assert "Server ready" in log and "generated 2.00 s of audio" in log
        assert not [line for line in log.splitlines() if line.startswith("{")], log[-2000:]
        assert "\x1b[" not in log  # no terminal colours in a file
    finally:
        s.stop()


# ---------------------------------------------------------------- uploads
def test_outputs_are_uploaded_to_upload_url(checkpoints, receiver):
    s = CogServer(checkpoints["plain"], upload_url=receiver.url + "/uploads/")
    try:
        assert s.wait_health()["status"] == "READY"
        status, body = s.predict({"prompt": "rock", "duration": 1, "seed": 9})
        assert status == 200 and body["status"] == "succeeded", body
        url = body["output"][0]
        assert url.startswith(receiver.url + "/uploads/"), url
        path = url[len(receiver.url):]
        assert path in receiver.uploads
        data, sr = sf.read(io.BytesIO(receiver.uploads[path]), always_2d=True)
        assert sr == SR and data.shape[0] == SR
    finally:
        s.stop()


# ---------------------------------------------------------------- concurrent predictions (continuous batching)
@pytest.fixture(scope="module")
def concurrent_server(checkpoints):
    s = CogServer(checkpoints["melody"], extra_env={"COG_MAX_CONCURRENCY": "4"})
    try:
        s.wait_health()
        yield s
    finally:
        s.stop()


def _mixed_requests() -> list[dict]:
    melody = data_uri(wav_bytes(tone([261.63, 329.63, 392.0], 3.0)))
    clip = data_uri(wav_bytes(tone([440.0, 330.0], 2.0)))
    return [
        {"prompt": "lofi beat", "duration": 3, "seed": 11, "top_k": 50},
        {"prompt": "piano", "input_audio": melody, "duration": 2, "seed": 12, "top_p": 0.9, "classifier_free_guidance": 1},
        {"input_audio": clip, "continuation": True, "duration": 4, "seed": 13, "temperature": 0.7},
        {"prompt": "a long piece", "duration": 32, "seed": 14, "classifier_free_guidance": 3},  # two windows
    ]


def _together(server, requests: list[dict], delays: list[float]) -> list:
    def send(i):
        time.sleep(delays[i])
        return server.predict(requests[i], retries_409=30)  # a slot is released a moment after its end

    return in_threads(send, len(requests))


def _alone(server, requests: list[dict]) -> list[str]:
    """Each request's output, one after another."""
    outputs = []
    for inputs in requests:
        status, body = server.predict(inputs)
        assert status == 200 and body["status"] == "succeeded", body
        outputs.append(body["output"][0])
    return outputs


def test_concurrent_requests_give_exactly_what_each_gives_alone(concurrent_server):
    requests = _mixed_requests()
    alone = _alone(concurrent_server, requests)
    # all four at once, then a late one joining while the long one is mid-window
    together = _together(concurrent_server, requests, [0, 0, 0, 0])
    for (status, body), expected in zip(together, alone):
        assert status == 200 and body["status"] == "succeeded", body
        assert body["output"][0] == expected  # the same bytes
    late = _together(concurrent_server, [requests[3], requests[0]], [0, 2.0])
    assert [body["output"][0] for _, body in late] == [alone[3], alone[0]]


def test_cancelling_one_of_four_leaves_the_others_untouched(concurrent_server, receiver):
    requests = _mixed_requests()
    expected = {}
    for i in (0, 1, 2):
        status, body = concurrent_server.predict(requests[i])
        expected[i] = body["output"][0]
    pid = "cancel-one-" + uuid.uuid4().hex[:8]
    status, _ = concurrent_server.predict({"prompt": "endless", "duration": 300, "seed": 1},
                                          headers={"Prefer": "respond-async"}, prediction_id=pid,
                                          webhook=receiver.url + "/hook")
    assert status == 202
    receiver.wait_for(lambda: any("generating:" in (e.get("logs") or "") for e in _events_for(receiver, pid)))
    results = {}

    def send(i):
        results[i] = concurrent_server.predict(requests[i], retries_409=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1, 2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert request("POST", f"{concurrent_server.url}/predictions/{pid}/cancel")[0] == 200
    for t in threads:
        t.join(timeout=600)
    receiver.wait_for(lambda: any(e["status"] == "canceled" for e in _events_for(receiver, pid)), timeout=60)
    for i in (0, 1, 2):
        status, body = results[i]
        assert status == 200 and body["status"] == "succeeded" and body["output"][0] == expected[i], body


def test_the_fifth_concurrent_request_gets_409(concurrent_server):
    results = {}

    def send(i):
        results[i] = concurrent_server.predict({"prompt": "busy", "duration": 40, "seed": 3}, retries_409=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(600):  # until the four slots are taken
        if request("GET", concurrent_server.url + "/health-check")[1]["status"] == "BUSY":
            break
        time.sleep(0.05)
    status, body = request("POST", concurrent_server.url + "/predictions", {"input": {"duration": 1}})
    for t in threads:
        t.join(timeout=600)
    assert status == 409, body
    outputs = {results[i][1]["output"][0] for i in range(4)}
    assert len(outputs) == 1  # the same seed four times side by side: the same bytes


def test_a_failing_request_harms_none_of_the_others(concurrent_server):
    requests = _mixed_requests()
    expected = [concurrent_server.predict(requests[i])[1]["output"][0] for i in (0, 2)]
    bad = {"input_audio": data_uri(b"definitely not audio\n" * 50, "text/plain"), "continuation": True, "duration": 1}
    results = _together(concurrent_server, [requests[0], bad, requests[2]], [0, 0.2, 0])
    assert results[1][1]["status"] == "failed" and "could not be decoded as audio" in results[1][1]["error"]
    assert [results[i][1]["output"][0] for i in (0, 2)] == expected


# ---------------------------------------------------------------- compiled serving on the CPU
def test_compiling_the_segments_step_is_refused_at_setup_in_one_sentence(checkpoints):
    s = CogServer(checkpoints["plain"], extra_env={"MUSICGEN_STEP": "segments", "MUSICGEN_COMPILE": "1"})
    try:
        health = s.wait_health()
        assert health["status"] == "SETUP_FAILED"
        logs = health["setup"]["logs"]
        assert "MUSICGEN_COMPILE=1 needs the fixed-shape step, but MUSICGEN_STEP=segments is set" in logs
        assert "unset MUSICGEN_STEP" in logs and "set MUSICGEN_COMPILE=0" in logs
    finally:
        s.stop()


def test_compile_on_a_cpu_serves_concurrent_requests_their_solo_bytes(checkpoints):
    """MUSICGEN_COMPILE=1 with the default step and precision on a CPU: the fixed-shape step (the segments' step
    is never compiled), kept eager in int8 with one line saying why, and four different requests at once each give
    the bytes they give alone. (The compiled fixed step's tokens are the eager one's: tests/test_scheduler.py.)"""
    s = CogServer(checkpoints["melody"], extra_env={"COG_MAX_CONCURRENCY": "4", "MUSICGEN_COMPILE": "1"})
    try:
        assert s.wait_health()["status"] == "READY", s.logs()
        log = s.log_path.read_text(errors="replace")
        assert "decode step ready for 4 slot(s)" in log, log[-3000:]
        assert "the decode step stays eager in int8 on a CPU" in log
        assert "compiled decode step failed" not in log
        requests = _mixed_requests()
        alone = _alone(s, requests)
        together = _together(s, requests, [0, 0, 0, 0])
        assert [body["output"][0] for _, body in together] == alone
    finally:
        s.stop()


def _sse(server, inputs: dict) -> list[tuple[str, dict]]:
    """POST /predictions with ``Accept: text/event-stream``: the (event, data) pairs as they arrive."""
    req = urllib.request.Request(server.url + "/predictions", data=json.dumps({"input": inputs}).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                                 method="POST")
    events, name = [], None
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.headers.get("Content-Type", "").startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def test_streaming_sends_each_chunk_of_audio_as_an_output_event_and_the_whole_clip_last(checkpoints):
    """MUSICGEN_STREAM_CHUNK_S: SSE clients get a WAV file per chunk while the request decodes and the final
    file last (output[-1]); the chunks, joined, are the final file's audio before normalization (clip: the
    same samples); a plain JSON request on the same server gets the same files in one response."""
    s = CogServer(checkpoints["plain"], extra_env={"MUSICGEN_STREAM_CHUNK_S": "0.5"})
    try:
        s.wait_health()
        inputs = {"prompt": "lofi", "duration": 4, "seed": 21, "normalization_strategy": "clip"}
        events = _sse(s, inputs)
        names = [name for name, _ in events]
        assert names[0] == "start" and names[-1] == "completed"
        chunks = [data["chunk"] for name, data in events if name == "output"]
        assert len(chunks) >= 5 and names.index("output") < names.index("completed")
        final = events[-1][1]["output"]
        assert final == chunks  # the completed event lists what was streamed, the whole clip last
        audio = [decode_output(uri) for uri in chunks]
        assert all(sr == 32000 for _, sr in audio)
        joined = np.concatenate([a for a, _ in audio[:-1]], axis=-1)
        whole = audio[-1][0]
        assert joined.shape == whole.shape == (1, 4 * 32000)
        assert np.abs(joined - whole).max() <= 1 / 32768 + 1e-6
        status, body = s.predict(inputs)
        assert status == 200 and body["status"] == "succeeded" and body["output"] == final
    finally:
        s.stop()
