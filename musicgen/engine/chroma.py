"""Melody conditioning: one-hot chroma features of a waveform, as MusicGen-Melody was trained on.

Same recipe as audiocraft's ChromaExtractor and transformers' MusicgenMelodyFeatureExtractor (which needs
torchaudio, unusable with our torch pin): power spectrogram (n_fft = window = 16384, hop 4096, centred,
window-energy normalised), librosa's chroma filter bank, max-normalise each frame, keep only its argmax.
"""

from __future__ import annotations

from functools import lru_cache

import torch

N_FFT = 16384
HOP = 4096
NUM_CHROMA = 12


@lru_cache(maxsize=4)
def _filter_bank(sample_rate: int, n_fft: int, num_chroma: int) -> torch.Tensor:
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=num_chroma, sampling_rate=sample_rate, tuning=0)
    return torch.from_numpy(bank).float()  # (num_chroma, n_fft // 2 + 1)


def chroma(wav: torch.Tensor, sample_rate: int, num_chroma: int = NUM_CHROMA) -> torch.Tensor:
    """One-hot chroma of a mono waveform ``(frames,)`` or ``(1, frames)``: returns ``(n_frames, num_chroma)``
    with ``n_frames = frames // HOP + 1`` (at least one STFT window)."""
    wav = wav.reshape(-1).float()
    if wav.numel() < N_FFT:  # shorter than one window: centre it in zeros, as the reference does
        pad = N_FFT - wav.numel()
        wav = torch.nn.functional.pad(wav, (pad // 2, pad - pad // 2))
    window = torch.hann_window(N_FFT, device=wav.device)
    spec = torch.stft(
        wav, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window,
        center=True, pad_mode="reflect", normalized=False, return_complex=True,
    )
    power = (spec.abs() / window.pow(2).sum().sqrt()).pow(2)  # (freq, time)
    raw = _filter_bank(sample_rate, N_FFT, num_chroma).to(wav.device) @ power  # (chroma, time)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=0, eps=1e-6)
    onehot = torch.zeros_like(norm.T)
    onehot.scatter_(1, norm.T.argmax(dim=1, keepdim=True), 1.0)
    return onehot
