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


def test_the_extension_picks_the_format(checkpoints, tmp_path):
    proc = _cli("--duration", "1", "--seed", "1", "--weights", str(checkpoints["plain"]), "-o", "clip.MP3",
                "--output-format", "mp3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
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
