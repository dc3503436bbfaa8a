"""Library pieces on their own: request validation, audio decoding, chroma, normalization, output."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SR, tone
from musicgen import GenerationRequest, MusicGenError
from musicgen import audio_io, chroma, normalize, output


def test_request_defaults_follow_spec():
    r = GenerationRequest()
    assert (r.prompt, r.input_audio, r.duration, r.continuation, r.continuation_start, r.continuation_end) == (
        None, None, 8, False, 0, None)
    assert (r.normalization_strategy, r.top_k, r.top_p, r.temperature, r.classifier_free_guidance,
            r.output_format, r.seed) == ("loudness", 250, 0.0, 1.0, 3, "wav", None)
    with pytest.raises(Exception):
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


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return float(np.fft.rfftfreq(wav.size, 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_decoding_resamples_and_keeps_pitch(tmp_path, sr):
    path = tmp_path / "a.flac"
    sf.write(path, np.stack([tone([440.0], 2.0, sr), tone([440.0], 2.0, sr)], axis=1), sr, format="FLAC")
    wav, decoded = audio_io.load_for_model(path, SR, 1)
    assert decoded.sample_rate == sr and decoded.total_seconds == pytest.approx(2.0)
    assert wav.shape == (1, 2 * SR)
    assert _peak_hz(wav[0].numpy(), SR) == pytest.approx(440.0, abs=1.0)


def test_decoding_a_window_reads_only_that_part(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone([440.0], 5.0), SR)
    wav, decoded = audio_io.load_for_model(path, SR, 2, start=1.0, end=3.0)
    assert wav.shape == (2, 2 * SR) and decoded.total_seconds == pytest.approx(5.0)


def test_decoder_is_chosen_by_content_not_extension(tmp_path):
    mp3 = tmp_path / "a.mp3"
    sf.write(mp3, tone([440.0], 1.0), SR, format="MP3")
    disguised = tmp_path / "upload"  # Cog names data: URI uploads without an extension
    disguised.write_bytes(mp3.read_bytes())
    wav, _ = audio_io.load_for_model(disguised, SR, 1)
    assert abs(wav.shape[1] - SR) <= 1152


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    data = tone([440.0], 1.0)
    data[100] = np.nan
    sf.write(path, data, SR, subtype="FLOAT")
    with pytest.raises(MusicGenError, match="NaN or infinity"):
        audio_io.decode_audio(path)


@pytest.mark.parametrize("have,want", [(1, 2), (2, 1), (6, 2), (2, 2)])
def test_channel_conversion(have, want):
    wav = torch.arange(have, dtype=torch.float32)[:, None].repeat(1, 10)
    out = audio_io.convert_channels(wav, want)
    assert out.shape == (want, 10)
    if want == 1:
        assert torch.allclose(out, wav.mean(0, keepdim=True))


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


def test_wav_output_is_16_bit_and_exact(tmp_path):
    wav = tone([440.0], 1.0)[None]
    path = output.write_audio(wav, SR, tmp_path, "wav")
    info = sf.info(path)
    assert (info.samplerate, info.frames, info.subtype, info.channels) == (SR, SR, "PCM_16", 1)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
