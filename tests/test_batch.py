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


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_batch_writes_each_output_once_like_alone_and_resumes(checkpoints, tmp_path):
    sf.write(tmp_path / "clip.wav", tone([440.0, 330.0], 2.0), SR)
    lines = [
        {"name": "text", "prompt": "lofi beat", "duration": 2, "seed": 1, "top_k": 50},
        {"name": "cont", "input_audio": "clip.wav", "continuation": True, "duration": 3, "seed": 2},
        {"name": "bad", "duration": 0},
        {"prompt": "no name, mp3", "duration": 1, "seed": 3, "output_format": "mp3", "classifier_free_guidance": 1},
        {"name": "lost", "input_audio": "missing.wav", "duration": 1},
    ]
    (tmp_path / "jobs.jsonl").write_text("# the jobs of this test\n\n" + "\n".join(json.dumps(line) for line in lines)
                                         + "\nnot json\n")
    done = _batch("jobs.jsonl", "-o", "out", "--weights", str(checkpoints["plain"]), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # three requests failed, the others are written
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["0006.mp3", "cont.wav", "results.jsonl", "text.wav"]
    results = _results(out)
    assert [(r["line"], r["name"], r["outcome"], r.get("file")) for r in results] == [
        (3, "text", "generated", "text.wav"), (4, "cont", "generated", "cont.wav"), (5, "bad", "failed", None),
        (6, "0006", "generated", "0006.mp3"), (7, "lost", "failed", None), (8, "0008", "failed", None)]
    assert results[0]["request"] == {"prompt": "lofi beat", "duration": 2, "seed": 1, "top_k": 50}
    assert results[1]["request"]["input_audio"] == "clip.wav" and results[5]["request"] == "not json"
    assert results[2]["error"] == "duration must be a whole number of seconds from 1 to 300, got 0."
    assert results[4]["error"] == ("line 7: input_audio missing.wav does not exist or is not a file; fix the path "
                                   "(relative to the requests file) or add the file.")
    assert results[5]["error"].startswith("line 8: not a JSON object")
    assert {r["name"]: r["seed"] for r in results if "seed" in r} == {"text": 1, "cont": 2, "0006": 3}
    assert done.stderr.count("batch:   0%") == 1 and "batch: 100%" in done.stderr and "3/3" in done.stderr
    # resumable: only what is missing is generated again, said before the model loads; one line per request
    text_mtime = (out / "text.wav").stat().st_mtime_ns
    (out / "cont.wav").unlink()
    for _ in range(2):
        again = _batch("jobs.jsonl", "-o", "out", "--weights", str(checkpoints["plain"]), cwd=tmp_path)
        assert again.returncode == 1
        assert (out / "cont.wav").is_file() and (out / "text.wav").stat().st_mtime_ns == text_mtime
        assert [(r["name"], r["outcome"], r.get("seed")) for r in _results(out)] == [
            ("text", "generated", 1), ("cont", "generated", 2), ("bad", "failed", None), ("0006", "generated", 3),
            ("lost", "failed", None), ("0008", "failed", None)]
    said = again.stderr.index("batch: 6 requests, 3 already done, 3 failed before generating, 0 to generate")
    assert "loaded" not in again.stderr  # nothing to do: no model loaded
    assert said >= 0 and not any(p.name.startswith(".") for p in out.iterdir())  # no scratch or partial left


def test_a_rerun_says_what_is_done_before_it_loads_the_model(checkpoints, tmp_path):
    (tmp_path / "prompts.txt").write_text("lofi beat\njazz trio\n")
    weights = ["--weights", str(checkpoints["plain"]), "--duration", "1"]
    assert _batch("prompts.txt", "-o", "out", *weights, cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "0002.wav").unlink()
    again = _batch("prompts.txt", "-o", "out", *weights, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert 0 <= again.stderr.index("batch: 2 requests, 1 already done, 0 failed before generating, 1 to generate") \
        < again.stderr.index("loaded ")
    assert [(r["name"], r["outcome"]) for r in _results(tmp_path / "out")] == [("0001", "generated"),
                                                                                ("0002", "generated")]


def test_a_text_file_is_one_prompt_per_line_with_the_flags_as_defaults(checkpoints, tmp_path):
    (tmp_path / "prompts.txt").write_text("# prompts for tonight\nlofi beat\n\n  # not a prompt either\njazz trio\n")
    done = _batch("prompts.txt", "-o", "out", "--duration", "1", "--seed", "7", "--output-format", "mp3",
                  "--weights", str(checkpoints["plain"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0002.mp3", "0005.mp3", "results.jsonl"]
    assert [r["request"] for r in _results(tmp_path / "out")] == [
        {"duration": 1, "output_format": "mp3", "seed": 7, "prompt": "lofi beat"},
        {"duration": 1, "output_format": "mp3", "seed": 7, "prompt": "jazz trio"}]


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
