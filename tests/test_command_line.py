"""What a person meets at the command line and in the library: where files go and stay, output names that
say their format, interrupts, progress and quiet runs (each through `musicgen` as a subprocess or the
library's public calls)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from conftest import SR, tone
from musicgen import GenerationRequest, MusicGenError

COMMAND = Path(sys.executable).parent / "musicgen"  # the console script pyproject.toml installs


def _cli(*args, env=None, cwd=None):
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model(checkpoints):
    from musicgen import MusicGen

    return MusicGen.load(checkpoints["plain"], device="cpu")


# ---------------------------------------------------------------- the library keeps files in output_dir
def test_predict_into_an_output_dir_creates_it_and_the_files_stay(model, tmp_path):
    target = tmp_path / "not" / "yet"
    result = model.predict(GenerationRequest(duration=1, seed=3), output_dir=target)
    assert [p.parent for p in result.paths] == [target] and result.paths[0].name.startswith("musicgen-3-")
    model.release_outputs()  # what the library removes on its own never includes the caller's directory
    assert result.paths[0].is_file() and sf.info(str(result.paths[0])).frames == SR


def test_an_output_dir_that_cannot_be_made_is_one_sentence(model, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MusicGenError) as caught:
        model.predict(GenerationRequest(duration=1, seed=1), output_dir=tmp_path / "a-file" / "out")
    assert str(caught.value) == (f"output_dir {tmp_path / 'a-file' / 'out'} cannot be created (Not a directory); "
                                 "pass a directory you can write to.")


# ---------------------------------------------------------------- output names say their format
@pytest.mark.parametrize("args,line", [
    (["-o", "x.flac"], "error: -o x.flac names a .flac file, but the output formats are wav and mp3; name the file "
                       ".wav or .mp3, or give a directory."),
    (["-o", "y.wav", "--output-format", "mp3"], "error: -o y.wav names a .wav file but --output-format is mp3; name "
                                                "the file y.mp3, or leave out --output-format (the extension picks the format)."),
])
def test_an_output_name_that_disagrees_with_its_format_is_refused(tmp_path, args, line):
    proc = _cli("--duration", "1", *args, cwd=tmp_path, env={"MUSICGEN_WEIGHTS": str(tmp_path / "never-loaded")})
    assert (proc.returncode, proc.stderr.strip()) == (2, line)
    assert list(tmp_path.iterdir()) == []


def test_the_extension_picks_the_format_and_quiet_says_nothing(checkpoints, tmp_path):
    proc = _cli("--duration", "1", "--seed", "1", "--weights", str(checkpoints["plain"]), "-o", "clip.MP3",
                "--output-format", "mp3", "--quiet", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "clip.MP3\n", "")  # --quiet: no bar, no info lines
    assert sf.info(str(tmp_path / "clip.MP3")).format == "MP3"


# ---------------------------------------------------------------- input_audio said in each surface's words
def test_the_library_asks_for_a_path_like_naming_a_file(tmp_path):
    with pytest.raises(MusicGenError) as caught:
        GenerationRequest(input_audio="clip.wav")
    assert str(caught.value) == ("input_audio must be a path-like object, not the plain string 'clip.wav'; pass "
                                 "pathlib.Path('clip.wav').")
    with pytest.raises(MusicGenError) as caught:
        GenerationRequest(input_audio=tmp_path / "clip.wav")
    assert str(caught.value) == (f"input_audio {tmp_path / 'clip.wav'} does not exist or is not a file; pass the "
                                 "path of an audio file.")


def test_the_command_says_its_input_audio_file_is_missing(tmp_path):
    proc = _cli("--input-audio", "gone.wav", "--continuation", cwd=tmp_path,
                env={"MUSICGEN_WEIGHTS": str(tmp_path / "never-loaded")})
    assert (proc.returncode, proc.stderr.strip()) == (
        2, "error: --input-audio gone.wav does not exist or is not a file; give the path of an audio file.")


# ---------------------------------------------------------------- flags, progress, Ctrl-C
def test_a_mistaken_device_flag_is_named(tmp_path):
    proc = _cli("--device", "gpu", "--duration", "1", env={"MUSICGEN_WEIGHTS": str(tmp_path / "never-loaded")})
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: --device must be one of auto, cpu, cuda, got 'gpu'.")
    (tmp_path / "jobs.txt").write_text("a prompt\n")
    proc = _cli("batch", "jobs.txt", "-o", "out", "--concurrency", "0", cwd=tmp_path)
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: --concurrency must be a whole number, 1 or more, got 0.")
    proc = _cli("batch", "jobs.txt", "-o", "out", cwd=tmp_path, env={"MUSICGEN_DEVICE": "gpu"})  # no flag: the variable
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: MUSICGEN_DEVICE must be one of auto, cpu, cuda, got 'gpu'.")


def test_help_shows_the_defaults_that_are_not_values():
    from musicgen.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--output-format {wav,mp3} Output format for generated audio. (default: the extension of -o, else wav)" in text
    assert "random seed will be used. (default: a random seed, printed) -o OUTPUT" in text
    assert "default to the end of the audio clip. (default: the end of the clip) --normalization-strategy" in text


def test_progress_counts_seconds_of_music_and_a_continuation_says_its_parts(checkpoints, tmp_path):
    sf.write(tmp_path / "clip.wav", tone([440.0, 330.0], 3.0), SR)
    proc = _cli("--input-audio", "clip.wav", "--continuation", "--continuation-end", "2", "--duration", "5",
                "--weights", str(checkpoints["plain"]), "-o", "more.wav", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "continuation: 2 s prompt + 3 s new" in proc.stderr
    assert "generating: 100%" in proc.stderr and "3.0/3.0 s of music" in proc.stderr and "step" not in proc.stderr


def test_a_melody_for_a_checkpoint_that_cannot_follow_one_is_said_in_flags(checkpoints, tmp_path):
    """What is refused once the model is loaded names the command's flags, as the checks before do (a continuation
    prompt too long for --duration: tests/test_project.py)."""
    sf.write(tmp_path / "clip.wav", tone([440.0, 330.0], 3.0), SR)
    proc = _cli("--input-audio", "clip.wav", "--duration", "2", "--weights", str(checkpoints["plain"]), "-o", "x.wav",
                cwd=tmp_path)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        "error: The loaded model plain cannot follow a melody (it is not a melody checkpoint); pass --continuation to "
        "continue --input-audio, or deploy facebook/musicgen-melody."), proc.stderr
    assert not (tmp_path / "x.wav").exists()


def _interrupted(command: list[str], cwd: Path, ready) -> tuple[int, str]:
    """Run ``command``, send it SIGINT once ``ready(stderr so far)`` holds, and return (exit status, stderr)."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "MUSICGEN_CONCURRENCY": "2"})
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")))
    reader.start()
    deadline = time.monotonic() + 240
    while not ready(b"".join(chunks).decode()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, b"".join(chunks).decode()  # still at work when interrupted
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    proc.stdout.close()
    return code, b"".join(chunks).decode()


def test_ctrl_c_exits_130_in_one_line(checkpoints, tmp_path):
    code, err = _interrupted([str(COMMAND), "--duration", "120", "--weights", str(checkpoints["plain"]), "-o", "x.wav"],
                             tmp_path, lambda err: "generating:" in err)
    assert (code, err.strip().splitlines()[-1]) == (130, "interrupted: nothing was written."), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and list(tmp_path.iterdir()) == []


def test_ctrl_c_in_a_batch_keeps_the_finished_files_and_says_so(checkpoints, tmp_path):
    (tmp_path / "jobs.jsonl").write_text('{"name": "short", "duration": 1, "seed": 1}\n'
                                         '{"name": "long", "duration": 120, "seed": 2}\n')
    code, err = _interrupted([str(COMMAND), "batch", "jobs.jsonl", "-o", "out", "--weights", str(checkpoints["plain"])],
                             tmp_path, lambda err: "batch:" in err and (tmp_path / "out" / "short.wav").exists())
    assert (code, err.strip().splitlines()[-1]) == (
        130, "interrupted: the 1 finished file(s) in out are kept (results.jsonl says which); run the same command "
             "again to resume."), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    import json

    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["outcome"]) for r in results] == [("short", "generated"), ("long", "pending")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.jsonl", "short.wav"]
