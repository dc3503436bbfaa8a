"""Batch mode: `musicgen batch` over a file of requests, decoded concurrently through the scheduler, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from conftest import SR, tone
from musicgen import GenerationRequest, MusicGen


def _batch(*args, cwd):
    command = Path(sys.executable).parent / "musicgen"
    return subprocess.run([str(command), "batch", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "MUSICGEN_CONCURRENCY": "3"})


def test_a_batch_writes_each_output_once_like_alone_and_resumes(checkpoints, tmp_path):
    sf.write(tmp_path / "clip.wav", tone([440.0, 330.0], 2.0), SR)
    lines = [
        {"name": "text", "prompt": "lofi beat", "duration": 2, "seed": 1, "top_k": 50},
        {"name": "cont", "input_audio": "clip.wav", "continuation": True, "duration": 3, "seed": 2},
        {"name": "bad", "duration": 0},
        {"prompt": "no name, mp3", "duration": 1, "seed": 3, "output_format": "mp3", "classifier_free_guidance": 1},
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    done = _batch("jobs.jsonl", "-o", "out", "--weights", str(checkpoints["plain"]), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # two requests failed, the others are written
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["0004.mp3", "cont.wav", "results.jsonl", "text.wav"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    errors = sorted(r["error"] for r in results if "error" in r)
    assert errors[0] == "duration must be a whole number of seconds from 1 to 300, got 0."
    assert errors[1].startswith("line 5: not a JSON object")
    assert {r["name"]: r["seed"] for r in results if "seed" in r} == {"text": 1, "cont": 2, "0004": 3}
    assert done.stderr.count("batch:   0%") == 1 and "batch: 100%" in done.stderr and "2/2" not in done.stderr
    # resumable: only what is missing is generated again
    text_mtime = (out / "text.wav").stat().st_mtime_ns
    (out / "cont.wav").unlink()
    again = _batch("jobs.jsonl", "-o", "out", "--weights", str(checkpoints["plain"]), cwd=tmp_path)
    assert again.returncode == 1
    assert (out / "cont.wav").is_file() and (out / "text.wav").stat().st_mtime_ns == text_mtime
    names = [json.loads(line).get("name") for line in (out / "results.jsonl").read_text().splitlines()]
    assert names.count("cont") == 2 and names.count("text") == 1
    assert not any(p.name.startswith(".musicgen-batch-") for p in out.iterdir())  # no scratch left


def test_a_text_file_is_one_prompt_per_line_with_the_flags_as_defaults(checkpoints, tmp_path):
    (tmp_path / "prompts.txt").write_text("lofi beat\n\njazz trio\n")
    done = _batch("prompts.txt", "-o", "out", "--duration", "1", "--seed", "7", "--output-format", "mp3",
                  "--weights", str(checkpoints["plain"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.mp3", "0003.mp3", "results.jsonl"]


def test_batched_outputs_are_the_bytes_each_request_gives_alone(checkpoints, tmp_path):
    from musicgen.serving.batch import run_batch

    model = MusicGen.load(checkpoints["melody"], device="cpu", concurrency=3)
    sf.write(tmp_path / "melody.wav", tone([262.0, 330.0, 392.0], 3.0), SR)
    requests = [dict(prompt="lofi beat", duration=2, seed=1, top_k=50),
                dict(prompt="piano", input_audio=tmp_path / "melody.wav", duration=1, seed=2, top_p=0.8),
                dict(duration=2, seed=3, temperature=0.5, classifier_free_guidance=1),
                dict(prompt="strings", duration=1, seed=4)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(
        json.dumps({**r, "input_audio": str(r["input_audio"])} if "input_audio" in r else r) for r in requests))
    assert run_batch(model, tmp_path / "jobs.jsonl", tmp_path / "out") == 0
    for number, inputs in enumerate(requests, start=1):
        alone = model.predict(GenerationRequest(**inputs)).paths[0].read_bytes()
        assert (tmp_path / "out" / f"{number:04d}.wav").read_bytes() == alone, number
