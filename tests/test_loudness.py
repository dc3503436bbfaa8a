"""Loudness measured as audiocraft measures it (torchaudio's ``Loudness``: the K-weighted signal clamped to
+-1 after each filter stage), against pyloudnorm's independent BS.1770-4 meter and worked cases."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
from pyloudnorm.iirfilter import IIRfilter
from scipy.signal import freqz

from conftest import SR, tone
from musicgen.audio import normalize
from musicgen.audio.loudness import integrated_loudness, k_weighted


def pyloudnorm_lufs(wav: np.ndarray, clamp: bool = False) -> float:
    """pyloudnorm's meter on (channels, frames); with ``clamp``, each of its K-weighting stages is followed by
    the clamp to +-1 of torchaudio's ``lfilter(clamp=True)`` (the definition of audiocraft's measurement)."""
    if not clamp:
        return float(pyloudnorm.Meter(SR).integrated_loudness(wav.T.astype(np.float64)))
    stages = [IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, SR, "high_shelf"), IIRfilter(0.0, 0.5, 38.0, SR, "high_pass")]
    weighted = wav.astype(np.float64)
    for stage in stages:
        weighted = np.stack([np.clip(stage.apply_filter(channel), -1.0, 1.0) for channel in weighted])
    return float(pyloudnorm.Meter(SR, filter_class="custom").integrated_loudness(weighted.T))


def noise(channels: int, seconds: float, std: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, int(seconds * SR))) * std).astype(np.float32)


QUIET = {
    "noise": lambda: noise(1, 3.0, 0.05),
    "stereo noise": lambda: noise(2, 2.5, 0.03, seed=1),
    "tones": lambda: tone([261.63, 440.0, 2000.0], 4.0, amp=0.3)[None],
    "soft then loud": lambda: np.concatenate([noise(1, 2.0, 0.001), noise(1, 2.0, 0.1, seed=2)], axis=1),
}


@pytest.mark.parametrize("name", list(QUIET))
def test_equals_pyloudnorm_where_the_k_weighted_signal_stays_within_1(name):
    wav = QUIET[name]()
    assert np.abs(k_weighted(wav, SR)).max() < 1.0  # the clamp never acts
    assert integrated_loudness(wav, SR) == pytest.approx(pyloudnorm_lufs(wav), abs=1e-6)


def test_a_1_khz_sine_measures_its_k_weighted_rms_level():
    # a sine of amplitude a through the K-weighting is a sine of amplitude a |H(1 kHz)|: -0.691 + 20 log10(a
    # |H| / sqrt(2)) LUFS, which BS.1770 calibrates to 20 log10(a / sqrt(2)) (-23.01 for 0.1) at 48 kHz;
    # the same biquad formulas at 32 kHz are 0.04 dB off that
    wav = tone([1000.0], 3.0, amp=0.1)[None]
    response = 1.0
    for stage in (IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, SR, "high_shelf"), IIRfilter(0.0, 0.5, 38.0, SR, "high_pass")):
        response *= abs(freqz(stage.b, stage.a, worN=[1000.0], fs=SR)[1][0])
    expected = -0.691 + 20 * math.log10(0.1 * response / math.sqrt(2))
    assert integrated_loudness(wav, SR) == pytest.approx(expected, abs=0.002)
    assert expected == pytest.approx(20 * math.log10(0.1 / math.sqrt(2)), abs=0.05)


LOUD = {
    "sine 20 dB over full scale": lambda: tone([1000.0], 3.0, amp=10.0)[None],
    "clipped square wave": lambda: np.sign(tone([3000.0], 3.0, amp=1.0))[None].astype(np.float32),
    "loud noise": lambda: noise(1, 3.0, 0.6),
    "loud stereo noise": lambda: noise(2, 3.0, 0.8, seed=3),
}


@pytest.mark.parametrize("name", list(LOUD))
def test_loud_audio_is_measured_with_the_clamp_as_audiocraft_does(name):
    wav = LOUD[name]()
    assert np.abs(k_weighted(wav, SR)).max() == 1.0  # clamped
    ours = integrated_loudness(wav, SR)
    assert ours == pytest.approx(pyloudnorm_lufs(wav, clamp=True), abs=1e-6)
    assert ours < pyloudnorm_lufs(wav) - 0.05  # without the clamp (pyloudnorm) it measures louder


def test_a_sine_far_over_full_scale_measures_as_a_full_scale_square_wave():
    # clamped after the shelf, a 1 kHz sine of amplitude 10 is nearly a +-1 square wave: mean square just
    # under 1, so just under -0.691 LUFS (unclamped: 20 log10(10 / sqrt(2)) = +17 LUFS)
    wav = tone([1000.0], 3.0, amp=10.0)[None]
    assert -1.5 < integrated_loudness(wav, SR) < -0.691
    assert pyloudnorm_lufs(wav) > 16.0


def test_loudness_normalization_applies_audiocrafts_gain_then_clamps():
    wav = noise(1, 3.0, 0.6)
    gain = 10 ** ((-14.0 - pyloudnorm_lufs(wav, clamp=True)) / 20)  # normalize_loudness, then _clip_wav
    expected = np.clip(wav.astype(np.float64) * gain, -1, 1)
    np.testing.assert_allclose(normalize.normalize(wav, SR, "loudness"), expected, atol=1e-6)


@pytest.mark.parametrize("wav", [np.zeros((1, SR)), np.zeros((2, 5 * SR)), noise(1, 0.3, 0.1)],
                         ids=["silence", "stereo silence", "shorter than a block"])
def test_silence_or_less_than_one_block_is_minus_infinity(wav):
    assert integrated_loudness(wav, SR) == -math.inf
