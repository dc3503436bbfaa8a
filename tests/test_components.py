"""Library pieces on their own: request validation, audio decoding, chroma, normalization, output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SR, tone
from musicgen import GenerationRequest, MusicGenError
from musicgen.engine import chroma
from musicgen.audio import normalize, output


def test_request_defaults_follow_spec():
    r = GenerationRequest()
    assert (r.prompt, r.input_audio, r.duration, r.continuation, r.continuation_start, r.continuation_end) == (
        None, None, 8, False, 0, None)
    assert (r.normalization_strategy, r.top_k, r.top_p, r.temperature, r.classifier_free_guidance,
            r.output_format, r.seed) == ("loudness", 250, 0.0, 1.0, 3, "wav", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.duration = 9  # frozen


def test_request_rejects_wrong_types():
    with pytest.raises(MusicGenError, match="duration must be a whole number"):
        GenerationRequest(duration=True)
    with pytest.raises(MusicGenError, match="top_k must be a whole number"):
        GenerationRequest(top_k="5")
    with pytest.raises(MusicGenError, match="temperature must be a number"):
        GenerationRequest(temperature=float("nan"))


def test_seed_resolution():
    assert GenerationRequest(seed=0).resolve_seed() == 0
    assert GenerationRequest(seed=2**32 - 1).resolve_seed() == 2**32 - 1
    seeds = {GenerationRequest(seed=-1).resolve_seed() for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)


def test_chroma_of_a_note_lights_its_pitch_class():
    a4 = chroma.chroma(torch.from_numpy(tone([440.0], 3.0)), SR)
    assert a4.shape == (3 * SR // chroma.HOP + 1, 12)
    assert torch.all(a4.sum(dim=1) == 1)  # one-hot
    assert torch.all(a4.argmax(dim=1) == 9)  # C, C#, D, ..., A is index 9
    c5 = chroma.chroma(torch.from_numpy(tone([523.25], 3.0)), SR)
    assert torch.all(c5.argmax(dim=1) == 0)


def test_short_audio_still_gives_one_chroma_frame():
    assert chroma.chroma(torch.from_numpy(tone([440.0], 0.1)), SR).shape[0] >= 1


@pytest.mark.parametrize("strategy", normalize.STRATEGIES)
def test_silence_is_never_nan(strategy):
    out = normalize.normalize(np.zeros((1, SR)), SR, strategy)
    assert np.isfinite(out).all() and not out.any()


def test_normalization_targets_on_a_tone():
    wav = tone([440.0], 2.0, amp=0.05)[None]
    assert np.abs(normalize.normalize(wav, SR, "peak")).max() == pytest.approx(10 ** (-1 / 20), rel=1e-6)
    rms = normalize.normalize(wav, SR, "rms")
    assert 20 * np.log10(np.sqrt(np.mean(rms**2))) == pytest.approx(-18.0, abs=1e-4)
    loud = normalize.normalize(wav, SR, "loudness")
    assert normalize.loudness_lufs(loud, SR) == pytest.approx(-14.0, abs=0.01)
    loud_tone = tone([440.0], 2.0, amp=1.2)[None]
    assert np.abs(normalize.normalize(loud_tone, SR, "clip")).max() == pytest.approx(10 ** (-1 / 20))


def test_wav_samples_are_audiocrafts_16_bit_pcm(tmp_path):
    # audiocraft pipes float32 to FFmpeg's pcm_s16le: round(x * 32768) (ties to even), clipped to int16
    samples = np.array([[0.5, -0.5, 1.0, -1.0, 3 / 65536, 5 / 65536, 32767.5 / 32768, -0.25 / 32768]], np.float32)
    path = output.write_audio(samples, SR, tmp_path, "wav")
    written, _ = sf.read(str(path), dtype="int16", always_2d=True)
    assert written[:, 0].tolist() == [16384, -16384, 32767, -32768, 2, 2, 32767, 0]


def test_wav_output_is_16_bit_and_exact(tmp_path):
    wav = tone([440.0], 1.0)[None]
    path = output.write_audio(wav, SR, tmp_path, "wav")
    info = sf.info(path)
    assert (info.samplerate, info.frames, info.subtype, info.channels) == (SR, SR, "PCM_16", 1)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
