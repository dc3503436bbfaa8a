"""The EnCodec round trip: waveforms at the model's rate to codebook codes and back, in overlapping chunks so
that memory stays bounded by one chunk however long the audio is. Stereo checkpoints interleave the left
and right channels' codebooks (L0 R0 L1 R1 ...), each channel coded on its own."""

from __future__ import annotations

import torch


def chunks(total: int, chunk: int, context: int):
    """(start, stop, lo, hi) frame ranges: chunks [start, stop) of ``total`` frames, each processed with up
    to ``context`` frames of overlap on both sides ([lo, hi)) and cropped back afterwards."""
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        yield start, stop, max(0, start - context), min(total, stop + context)


class Codec:
    def __init__(self, encodec, channels: int, num_codebooks: int, chunk_frames: int, context_frames: int = 50):
        """``encodec``: transformers' EncodecModel; ``chunk_frames`` and ``context_frames``: the chunks long
        audio is coded in, and their overlap on each side."""
        self.model, self.channels, self.num_codebooks = encodec, channels, num_codebooks
        cfg = encodec.config
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = int(round(cfg.frame_rate))
        self.hop = self.sample_rate // self.frame_rate  # samples per frame
        self.chunk_frames, self.context_frames = chunk_frames, context_frames

    def frames(self, samples: int) -> int:
        """Codec frames ``samples`` of audio encode to (a partial last frame counts)."""
        return -(-samples // self.hop)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, chunk_frames: int | None = None, context_frames: int | None = None) -> torch.Tensor:
        """Waveform (channels, samples) at the model's rate and channel count -> codes (K, frames), every
        sample coded: a last partial frame is padded by the encoder's own convolutions (as in audiocraft's
        EnCodec), so ``frames = ceil(samples / hop)``. ``chunk_frames``/``context_frames`` override the
        codec's chunking."""
        spans = chunks(self.frames(wav.shape[-1]), chunk_frames or self.chunk_frames,
                       self.context_frames if context_frames is None else context_frames)
        pieces = [self._encode(wav[:, lo * self.hop : hi * self.hop])[:, start - lo : stop - lo]
                  for start, stop, lo, hi in spans]
        return torch.cat(pieces, dim=-1) if pieces else torch.zeros(self.num_codebooks, 0, dtype=torch.long)

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.to(self.device, next(self.model.parameters()).dtype)
        per_channel = [self.model.encode(wav[c][None, None]).audio_codes[0, 0] for c in range(self.channels)]
        if self.channels == 1:
            return per_channel[0]
        return torch.stack(per_channel, dim=1).reshape(self.num_codebooks, -1)  # (K/2, 2, T): interleave

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, chunk_frames: int | None = None, context_frames: int | None = None) -> torch.Tensor:
        """Codes (K, frames) -> waveform (channels, frames * hop), float32 on the CPU."""
        spans = chunks(codes.shape[-1], chunk_frames or self.chunk_frames,
                       self.context_frames if context_frames is None else context_frames)
        pieces = [self._decode(codes[:, lo:hi])[:, (start - lo) * self.hop : (stop - lo) * self.hop]
                  for start, stop, lo, hi in spans]
        return torch.cat(pieces, dim=-1)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.to(self.device)
        per_channel = [codes] if self.channels == 1 else [codes[0::2], codes[1::2]]
        out = [self.model.decode(c[None, None], audio_scales=[None]).audio_values[0, 0] for c in per_channel]
        return torch.stack(out).float().cpu()
