"""The Cog predictor end to end (setup() + predict()) on tiny random-weight checkpoints."""

from __future__ import annotations

import hashlib
import logging
import re

import numpy as np
import pytest
import soundfile as sf
from cog import Path

from conftest import SR, read, run, tone
from musicgen import GenerationRequest, MusicGenError
from musicgen.audio.normalize import loudness_lufs

def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- text, melody, continuation
@pytest.mark.parametrize("duration", [1, 3])
def test_text_only_wav_is_exact_length(plain_predictor, duration):
    out = run(plain_predictor, prompt="lofi beat with piano", duration=duration, seed=5)
    assert out.suffix == ".wav" and out.is_file()
    wav, sr = read(out)
    assert sr == SR
    assert wav.shape == (1, duration * SR)
    assert np.abs(wav).max() > 0.01  # real audio, not silence


def test_unconditional_generation_without_prompt(plain_predictor):
    wav, _ = read(run(plain_predictor, prompt=None, duration=1, seed=1))
    assert wav.shape == (1, SR) and np.abs(wav).max() > 0.01
    wav2, _ = read(run(plain_predictor, prompt="   ", duration=1, seed=1))
    np.testing.assert_array_equal(wav, wav2)  # blank prompt == no prompt


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_melody_from_audio_file(melody_predictor, audio_files, fmt):
    common = dict(prompt="piano", duration=2, seed=3, temperature=0.0)
    wav, sr = read(run(melody_predictor, input_audio=Path(audio_files[fmt]), **common))
    assert sr == SR and wav.shape == (1, 2 * SR)
    assert not np.array_equal(wav, read(run(melody_predictor, **common))[0])  # the melody steered it


def test_melody_changes_the_output(melody_predictor, audio_files):
    common = dict(prompt="piano", duration=2, seed=11, temperature=0.0)
    none = read(run(melody_predictor, **common))[0]
    first = read(run(melody_predictor, input_audio=Path(audio_files["wav"]), **common))[0]
    other = read(run(melody_predictor, input_audio=Path(audio_files["other_melody"]), **common))[0]
    assert not np.array_equal(none, first)
    assert not np.array_equal(first, other)


def test_melody_on_plain_model_names_the_model(plain_predictor, audio_files):
    with pytest.raises(MusicGenError, match=r"The loaded model plain cannot follow a melody"):
        run(plain_predictor, input_audio=Path(audio_files["wav"]), duration=1)


def test_silent_melody_is_refused_with_reason(melody_predictor, audio_files):
    with pytest.raises(MusicGenError, match=r"input_audio is silent, so it has no melody to follow"):
        run(melody_predictor, input_audio=Path(audio_files["silent"]), duration=1)


@pytest.mark.parametrize("start,end", [(0, None), (1, 3), (1, -1), (2, 99)])
def test_continuation_duration_is_the_whole_output_prompt_included(plain_predictor, audio_files, start, end):
    out = run(plain_predictor, prompt="piano", input_audio=Path(audio_files["wav"]), continuation=True,
              continuation_start=start, continuation_end=end, duration=5, seed=4)
    wav, sr = read(out)
    assert sr == SR and wav.shape == (1, 5 * SR)


def test_a_3_s_prompt_with_duration_8_gives_8_s(plain_predictor, audio_files):
    out = run(plain_predictor, input_audio=Path(audio_files["wav"]), continuation=True, continuation_start=1,
              duration=8, seed=4)  # the 4 s clip from 1 s: a 3 s prompt
    assert sf.info(str(out)).frames == 8 * SR  # 8.000 s, as audiocraft's duration


@pytest.mark.parametrize("prompt_s,duration,shown,advice", [
    (10.0, 8, "10.00", "set duration to 11 or more, or "),
    (7.99, 8, "8.00", "set duration to 9 or more, or "),  # 399.5 frames: the encoder pads it to 400, no room left
    (4.0, 4, "4.00", "set duration to 5 or more, or "),
])
def test_a_prompt_not_shorter_than_duration_is_refused_with_one_sentence(plain_predictor, tmp_path, prompt_s,
                                                                         duration, shown, advice):
    path = tmp_path / "long.wav"
    sf.write(path, tone([440.0, 330.0], prompt_s), SR)
    with pytest.raises(MusicGenError) as err:
        run(plain_predictor, input_audio=Path(path), continuation=True, duration=duration, seed=1)
    assert str(err.value) == (
        f"The continuation prompt ({shown} s of input_audio) must be shorter than duration ({duration} s), which is "
        f"the length of the whole output, prompt included; {advice}choose a shorter part with continuation_start "
        "and continuation_end.")


def test_the_whole_prompt_is_encoded_its_last_partial_frame_padded(plain_predictor, tmp_path):
    """audiocraft encodes every prompt sample (EnCodec pads the last partial frame): 3.013 s is 150.65
    frames, so 151 frames of context, and the output is still exactly ``duration``."""
    from musicgen.request import GenerationRequest

    path = tmp_path / "odd.wav"
    sf.write(path, tone([440.0], 3.013), SR)
    windows = []
    result = plain_predictor.musicgen.predict(
        GenerationRequest(input_audio=path, continuation=True, duration=4, seed=2), tmp_path, on_window=windows.append)
    assert [(w.context.shape[1], w.new.shape[1]) for w in windows] == [(151, 4 * 50 - 151)]
    assert sf.info(str(result.paths[0])).frames == 4 * SR


def test_continuation_depends_on_the_prompt_audio(plain_predictor, audio_files):
    common = dict(prompt="piano", continuation=True, duration=5, seed=8, temperature=0.0)
    a = read(run(plain_predictor, input_audio=Path(audio_files["wav"]), **common))[0]
    b = read(run(plain_predictor, input_audio=Path(audio_files["other_melody"]), **common))[0]
    assert a.shape == b.shape and not np.array_equal(a[:, -SR:], b[:, -SR:])


def test_continuation_on_melody_model_with_resampled_stereo_input(melody_predictor, audio_files):
    out = run(melody_predictor, input_audio=Path(audio_files["stereo44k"]), continuation=True,
              continuation_start=2, continuation_end=5, duration=4, seed=2)
    wav, _ = read(out)
    assert wav.shape == (1, 4 * SR)


def test_continuation_fields_ignored_without_continuation(plain_predictor, caplog):
    with caplog.at_level(logging.INFO):
        out = run(plain_predictor, continuation_start=3, continuation_end=5, duration=1, seed=1)
    assert read(out)[0].shape == (1, SR)
    assert "ignored because continuation is false" in caplog.text


# ---------------------------------------------------------------- normalization
def test_peak_normalization_hits_minus_1_dbfs(plain_predictor):
    wav, _ = read(run(plain_predictor, prompt="drums", duration=2, seed=1, normalization_strategy="peak"))
    assert np.abs(wav).max() == pytest.approx(10 ** (-1 / 20), abs=2 / 32768)


def test_clip_normalization_stays_within_0_891(plain_predictor):
    wav, _ = read(run(plain_predictor, prompt="drums", duration=2, seed=1, normalization_strategy="clip"))
    assert np.abs(wav).max() <= 10 ** (-1 / 20) + 1 / 32768


def test_rms_normalization_hits_minus_18_dbfs(plain_predictor):
    wav, _ = read(run(plain_predictor, prompt="drums", duration=2, seed=1, normalization_strategy="rms"))
    assert np.abs(wav).max() < 1.0  # nothing clipped, so the target must be met exactly
    rms_db = 20 * np.log10(np.sqrt(np.mean(wav.mean(axis=0) ** 2)))
    assert rms_db == pytest.approx(-18.0, abs=0.05)


def test_loudness_normalization_hits_minus_14_lufs(plain_predictor):
    wav, _ = read(run(plain_predictor, prompt="drums", duration=3, seed=1, normalization_strategy="loudness"))
    assert np.abs(wav).max() < 1.0  # nothing clipped
    assert loudness_lufs(wav, SR) == pytest.approx(-14.0, abs=0.5)


# ---------------------------------------------------------------- output formats
def test_mp3_output_decodes_to_right_rate_and_duration(plain_predictor):
    import av

    out = run(plain_predictor, prompt="synth", duration=2, seed=2, output_format="mp3")
    assert out.suffix == ".mp3"
    wav, sr = read(out)
    assert sr == SR and abs(wav.shape[1] - 2 * SR) <= 1152  # within one MP3 frame
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3") and stream.bit_rate == 320_000


def test_each_prediction_writes_into_a_fresh_directory(plain_predictor):
    first = run(plain_predictor, duration=1, seed=1)
    second = run(plain_predictor, duration=1, seed=1)
    assert first.parent != second.parent and first.name != second.name
    assert second.is_file()


# ---------------------------------------------------------------- seeds
def test_same_seed_gives_identical_bytes(plain_predictor):
    a = run(plain_predictor, prompt="jazz", duration=2, seed=1234)
    a_hash = sha(a)
    b = run(plain_predictor, prompt="jazz", duration=2, seed=1234)
    assert sha(b) == a_hash


def test_different_seeds_give_different_audio(plain_predictor):
    a = read(run(plain_predictor, prompt="jazz", duration=2, seed=1))[0]
    b = read(run(plain_predictor, prompt="jazz", duration=2, seed=2))[0]
    assert not np.array_equal(a, b)


def test_seed_zero_is_a_real_seed_and_random_seed_is_logged_and_reproducible(plain_predictor, caplog):
    a = sha(run(plain_predictor, duration=1, seed=0))
    assert sha(run(plain_predictor, duration=1, seed=0)) == a
    caplog.clear()
    with caplog.at_level(logging.INFO):
        first = sha(run(plain_predictor, prompt="rock", duration=1, seed=-1))
    used = int(re.search(r"seed (\d+)", caplog.text).group(1))
    assert sha(run(plain_predictor, prompt="rock", duration=1, seed=used)) == first


def test_greedy_decoding_ignores_the_seed(plain_predictor):
    a = read(run(plain_predictor, prompt="jazz", duration=1, seed=1, temperature=0.0))[0]
    b = read(run(plain_predictor, prompt="jazz", duration=1, seed=2, temperature=0.0))[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overrides", [
    dict(top_p=0.9), dict(top_k=0), dict(classifier_free_guidance=0), dict(classifier_free_guidance=1),
    dict(temperature=2.5, top_k=5), dict(temperature=1e-30), dict(classifier_free_guidance=10**9),
])
def test_sampling_settings_change_the_music_and_reproduce(plain_predictor, overrides):
    common = dict(prompt="ambient", duration=1, seed=3)
    wav, _ = read(run(plain_predictor, **common, **overrides))
    assert wav.shape == (1, SR) and np.abs(wav).max() > 0.01
    np.testing.assert_array_equal(wav, read(run(plain_predictor, **common, **overrides))[0])
    assert not np.array_equal(wav, read(run(plain_predictor, **common))[0])  # the setting was applied


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-39])
def test_a_temperature_too_small_to_divide_by_decodes_greedily(plain_predictor, temperature):
    common = dict(prompt="ambient", duration=1, seed=3)
    greedy = sha(run(plain_predictor, temperature=0.0, **common))
    assert sha(run(plain_predictor, temperature=temperature, **common)) == greedy


def test_the_library_returns_the_seed_it_used(plain_predictor):
    service = plain_predictor.musicgen
    result = service.predict(GenerationRequest(prompt="rock", duration=1, seed=-1))
    assert 0 <= result.seed <= 2**32 - 1 and result.paths[0].name.startswith(f"musicgen-{result.seed}-")
    assert set(result.timings) == {"audio_in", "generate", "output", "total"}
    assert result.timings["total"] >= result.timings["generate"] > 0
    first = sha(result.paths[0])
    again = service.predict(GenerationRequest(prompt="rock", duration=1, seed=result.seed))
    assert again.seed == result.seed and sha(again.paths[0]) == first


def test_a_prompt_over_the_text_encoders_limit_is_refused_before_any_work(plain_predictor, audio_files):
    words = "lofi hip hop beat with mellow piano and soft drums " * 60  # ~600 tokens of a 512-token encoder
    with pytest.raises(MusicGenError) as err:  # refused before the (unreadable) audio is even opened
        run(plain_predictor, prompt=words, input_audio=Path(audio_files["text"]), continuation=True, duration=1)
    assert re.fullmatch(r"prompt is \d+ tokens long, more than the 512 tokens the text encoder reads; shorten it\.",
                        str(err.value)), str(err.value)
    with pytest.raises(MusicGenError) as err:
        run(plain_predictor, prompt="x" * 1_000_000, duration=1)
    assert str(err.value) == ("prompt is 1000000 characters long, far more than the 512 tokens the text encoder "
                              "reads; shorten it to a few sentences.")
    wav, _ = read(run(plain_predictor, prompt=words[:600], duration=1, seed=1))  # within the limit: fine
    assert wav.shape == (1, SR)


def test_integral_floats_are_taken_as_integers():
    request = GenerationRequest(duration=2.0, top_k=5.0, seed=7.0, continuation_end=-1.0)
    assert (request.duration, request.top_k, request.seed, request.continuation_end) == (2, 5, 7, -1)
    assert all(type(v) is int for v in (request.duration, request.top_k, request.seed))
    with pytest.raises(MusicGenError) as err:
        GenerationRequest(duration=2.5)
    assert str(err.value) == "duration must be a whole number of seconds from 1 to 300, got 2.5."


# ---------------------------------------------------------------- errors (the contract's rules, docs/api.md)
@pytest.mark.parametrize("inputs,sentence", [
    (dict(continuation=True), r"continuation=true needs input_audio"),
    (dict(duration=0), r"duration must be a whole number of seconds from 1 to 300, got 0"),
    (dict(duration=301), r"duration must be a whole number of seconds from 1 to 300, got 301"),
    (dict(normalization_strategy="loud"), r"normalization_strategy must be one of loudness, clip, peak, rms"),
    (dict(output_format="ogg"), r"output_format must be one of wav, mp3"),
    (dict(top_k=-1), r"top_k must be a whole number, 0 or more"),
    (dict(top_p=1.5), r"top_p must be a number from 0 to 1"),
    (dict(temperature=-0.1), r"temperature must be a number, 0 or more"),
    (dict(classifier_free_guidance=-1), r"classifier_free_guidance must be a whole number, 0 or more"),
    (dict(seed=-2), r"seed must be a whole number from 0 to 4294967295, or -1"),
    (dict(seed=2**32), r"seed must be a whole number from 0 to 4294967295, or -1"),
    (dict(continuation_start=-1), r"continuation_start must be a whole number of seconds, 0 or more"),
    (dict(input_audio="/etc/passwd"), r"input_audio must be an uploaded audio file .*not a plain string"),
])
def test_invalid_inputs_fail_with_one_sentence(plain_predictor, inputs, sentence):
    with pytest.raises(MusicGenError, match=sentence) as err:
        run(plain_predictor, duration=inputs.pop("duration", 1), **inputs)
    message = str(err.value)
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("start,end,sentence", [
    (2, 2, r"continuation_end \(2 s\) must be after continuation_start \(2 s\)"),
    (3, 1, r"continuation_end \(1 s\) must be after continuation_start \(3 s\)"),
    (4, None, r"continuation_start \(4 s\) is at or past the end of input_audio \(4.00 s long\)"),
    (10, -1, r"continuation_start \(10 s\) is at or past the end of input_audio"),
])
def test_bad_continuation_window(plain_predictor, audio_files, start, end, sentence):
    with pytest.raises(MusicGenError, match=sentence):
        run(plain_predictor, input_audio=Path(audio_files["wav"]), continuation=True,
            continuation_start=start, continuation_end=end, duration=1)


@pytest.mark.parametrize("name,sentence", [
    ("text", r"input_audio could not be decoded as audio"),
    ("empty", r"input_audio is an empty file"),
])
def test_unreadable_audio(plain_predictor, audio_files, name, sentence):
    with pytest.raises(MusicGenError, match=sentence):
        run(plain_predictor, input_audio=Path(audio_files[name]), continuation=True, duration=1)


def test_no_output_file_is_left_by_a_failed_prediction(plain_predictor, audio_files, tmp_path):
    before = run(plain_predictor, duration=1, seed=1)
    with pytest.raises(MusicGenError):
        run(plain_predictor, input_audio=Path(audio_files["text"]), continuation=True, duration=1)
    assert sorted(p.name for p in before.parent.iterdir()) == [before.name]


@pytest.mark.parametrize("duration,windows", [(2, 1), (3, 2), (6, 5)])
@pytest.mark.parametrize("mode", ["text", "melody", "continuation"])
def test_long_outputs_over_several_windows_are_exact(melody_predictor, audio_files, caplog, duration, windows, mode):
    # continuation: the 1 s prompt is the first window's whole context (1 s new), then 1.2 s each, up to
    # `duration` in all: as many windows as text alone
    from musicgen.engine.engine import WindowSettings

    engine = melody_predictor.musicgen.engine
    saved = engine.windows
    engine.windows = WindowSettings(window_s=2.0, stride_s=1.2)  # shrunk so the tiny model stays fast
    try:
        extra = {"melody": dict(input_audio=Path(audio_files["wav"])),
                 "continuation": dict(input_audio=Path(audio_files["wav"]), continuation=True, continuation_end=1),
                 "text": {}}[mode]
        with caplog.at_level(logging.INFO):
            wav, _ = read(run(melody_predictor, prompt="folk", duration=duration, seed=21, **extra))
        again, _ = read(run(melody_predictor, prompt="folk", duration=duration, seed=21, **extra))
    finally:
        engine.windows = saved
    assert wav.shape == (1, duration * SR)
    assert (f"window {windows}/{windows}" in caplog.text) == (windows > 1)
    np.testing.assert_array_equal(wav, again)  # seeds reproduce long outputs


def test_outputs_are_removed_when_the_service_goes_away_or_the_process_exits(checkpoints):
    import gc
    import subprocess
    import sys
    import weakref

    from musicgen.request import GenerationRequest
    from musicgen.serving.service import MusicGen

    service = MusicGen.load(checkpoints["plain"], device="cpu")
    [path] = service.predict(GenerationRequest(duration=1, seed=1)).paths
    alive = weakref.ref(service)
    del service
    gc.collect()
    assert alive() is None and not path.parent.exists()  # nothing keeps a dropped model (and its memory)

    script = (f"from musicgen.serving.service import MusicGen\nfrom musicgen.request import GenerationRequest\n"
              f"s = MusicGen.load({str(checkpoints['plain'])!r}, device='cpu')\n"
              f"print(s.predict(GenerationRequest(duration=1, seed=2)).paths[0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr
    written = Path(done.stdout.strip().splitlines()[-1])
    assert written.name.startswith("musicgen-2") and not written.parent.exists()
