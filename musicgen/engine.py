"""The generation engine: conditioning, classifier-free guidance, the codebook delay pattern, prompt
forcing, token-by-token decoding with a KV cache, windows past the model's 30 s context, and the EnCodec
round trip.

It runs its own decode loop (not transformers' ``generate()``) over a backend: ``musicgen.decoder``'s lean
decoder (default) or transformers' own modules (the parity reference). So sampling follows audiocraft
exactly, seeds go through a per-request ``torch.Generator``, and a progress callback runs between decode
steps (where Cog can also cancel the prediction).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import chroma as chroma_mod
from .sampling import SamplingParams, apply_cfg, sample_next

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (decode steps done, decode steps in total)


@dataclass(frozen=True)
class WindowSettings:
    """Long generation (audiocraft's extend scheme): windows of ``window_s`` seconds; each next window is
    prompted with the last ``window_s - stride_s`` seconds of tokens already generated."""

    window_s: float = 30.0
    stride_s: float = 18.0


@dataclass(frozen=True)
class WindowEvent:
    """One generated window, reported to ``generate(on_window=...)``."""

    index: int  # 0-based
    count: int  # windows in this generation
    start_frame: int  # where the window starts in the clip (prompt included); the melody is read from here
    context: torch.Tensor  # (K, ctx) tokens the window was prompted with
    new: torch.Tensor  # (K, n) tokens it generated


@dataclass
class _Conditioning:
    """Conditioning for a batch of CFG rows ([cond] or [cond, uncond])."""

    rows: int
    states: torch.Tensor  # plain: text states for cross-attention; melody: the prefix (rows, L, H)
    mask: torch.Tensor | None = None  # plain: text attention mask (rows, L)


def _chunks(total: int, chunk: int, context: int):
    """(start, stop, lo, hi) frame ranges: chunks [start, stop) of ``total`` frames, each processed with up
    to ``context`` frames of overlap on both sides ([lo, hi)) and cropped back afterwards."""
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        yield start, stop, max(0, start - context), min(total, stop + context)


class _ReferenceBackend:
    """transformers' own decoder modules with their dynamic cache (the parity reference)."""

    def __init__(self, hf_decoder, is_melody: bool):
        self.decoder, self.is_melody = hf_decoder, is_melody

    def start(self, cond: _Conditioning, max_len: int) -> None:
        self.cond, self.cache, self.first = cond, None, True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, k, length = ids.shape
        if self.is_melody:
            kwargs = {"encoder_hidden_states": self.cond.states} if self.first else {}
        else:
            kwargs = {"encoder_hidden_states": self.cond.states, "encoder_attention_mask": self.cond.mask}
        out = self.decoder(input_ids=ids.reshape(rows * k, length), past_key_values=self.cache, use_cache=True, **kwargs)
        self.cache, self.first = out.past_key_values, False
        return out.logits[:, -1, :].float().reshape(rows, k, -1)


class _FastBackend:
    """The lean decoder of ``musicgen.decoder`` with a preallocated cache."""

    def __init__(self, hf_decoder, is_melody: bool, precision: str, compile: bool, static: bool | None,
                 window_len: int):
        """``window_len``: decode steps in a full window; a static step always allocates that much cache."""
        from .decoder import FastDecoder

        self.decoder, self.is_melody = FastDecoder(hf_decoder, precision, compile=compile, static=static), is_melody
        self.window_len = window_len

    def start(self, cond: _Conditioning, max_len: int) -> None:
        self.prefix = cond.states if self.is_melody else None
        if self.decoder.static:  # one cache shape (one compiled graph) for every request length
            max_len = max(max_len, self.window_len)
        if self.is_melody:
            self.decoder.start(cond.rows, cond.states.shape[1] + max_len)
        else:
            self.decoder.start(cond.rows, max_len, cond.states, cond.mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.decoder.forward(ids, self.prefix)
        self.prefix = None
        return logits


class Engine:
    def __init__(self, model, tokenizer, windows: WindowSettings | None = None, backend: str = "fast",
                 precision: str = "fp32", compile: bool = False, static_step: bool | None = None):
        """``backend`` "fast" decodes with ``musicgen.decoder`` in ``precision`` (fp32, bf16, fp16, int8,
        int4), its decode step optionally through ``torch.compile`` and with fixed shapes (``static_step``,
        default: when compiling on CUDA, for CUDA graphs); "reference" runs transformers' own modules in
        the checkpoint's dtype (for parity checks)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.windows = windows or WindowSettings()
        cfg = model.config
        self.is_melody = cfg.model_type == "musicgen_melody"
        self.num_codebooks = int(model.decoder.num_codebooks)
        self.channels = int(cfg.decoder.audio_channels)
        self.sample_rate = int(cfg.audio_encoder.sampling_rate)
        self.frame_rate = int(round(cfg.audio_encoder.frame_rate))
        self.hop = self.sample_rate // self.frame_rate
        gen = model.generation_config
        self.start_id = int(gen.decoder_start_token_id if gen.decoder_start_token_id is not None else cfg.decoder.bos_token_id)
        per_channel = self.num_codebooks // self.channels
        # codebook k is delayed by its index within its channel; stereo interleaves L/R codebooks
        self.delays = torch.tensor([k // self.channels for k in range(self.num_codebooks)])
        self.max_delay = per_channel - 1
        if backend == "fast":
            self.backend = _FastBackend(model.decoder, self.is_melody, precision, compile, static_step,
                                        window_len=self.window_frames + self.max_delay + 1)
        elif backend == "reference":
            self.backend = _ReferenceBackend(model.decoder, self.is_melody)
        else:
            raise ValueError(f"backend must be 'fast' or 'reference', got {backend!r}")
        self.backend_name, self.precision = backend, precision if backend == "fast" else "fp32"

    def disable_compile(self) -> None:
        """Decode with the eager step from now on (when ``torch.compile`` fails on this machine)."""
        if self.backend_name == "fast":
            self.backend.decoder.disable_compile()

    def release_reference_weights(self) -> None:
        """Drop the transformers decoder's own layer, embedding and head weights once the fast backend holds
        its copy, so a served model keeps one set of decoder weights in memory (the reference backend
        cannot run afterwards)."""
        if self.backend_name != "fast":
            return
        inner = self.model.decoder.model.decoder
        inner.layers = torch.nn.ModuleList()
        inner.embed_tokens = torch.nn.ModuleList()
        self.model.decoder.lm_heads = torch.nn.ModuleList()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.text_encoder.parameters()).dtype

    @property
    def window_frames(self) -> int:
        return int(round(self.windows.window_s * self.frame_rate))

    @property
    def stride_frames(self) -> int:
        return int(round(self.windows.stride_s * self.frame_rate))

    # ---------------------------------------------------------------- conditioning
    def _text_states(self, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected text-encoder states (1, L, H) and mask (1, L); None gives the null condition."""
        hidden_size = self.model.config.text_encoder.hidden_size
        if text is None:
            return (torch.zeros(1, 1, hidden_size, device=self.device, dtype=self.dtype),
                    torch.zeros(1, 1, dtype=torch.long, device=self.device))
        enc = self.tokenizer([text], return_tensors="pt", padding=True)
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    def _project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        proj = getattr(self.model, "enc_to_dec_proj", None)
        return proj(hidden) if proj is not None else hidden

    def _melody_states(self, chroma: torch.Tensor | None, rows_like: int) -> torch.Tensor:
        """Chroma (T, 12) (or None for the null melody) projected and tiled to the model's chroma length."""
        num_chroma = self.model.config.num_chroma
        if chroma is None:
            chroma = torch.zeros(rows_like, num_chroma)
            chroma[:, 0] = 1.0  # the null melody, as the checkpoints were trained
        states = chroma[None].to(self.device, self.dtype)
        proj = getattr(self.model, "audio_enc_to_dec_proj", None)
        if proj is not None:
            states = proj(states)
        length = self.model.config.chroma_length
        if states.shape[1] < length:
            states = states.repeat(1, math.ceil(length / states.shape[1]), 1)
        return states[:, :length]

    def condition(self, text: str | None, chroma: torch.Tensor | None, cfg_scale: float,
                  text_states: tuple[torch.Tensor, torch.Tensor] | None = None) -> _Conditioning:
        """Build the decoder inputs for the conditional row and, when guidance changes anything, the
        unconditional row (null text, null melody). ``text_states`` reuses ``_text_states(text)`` computed
        earlier (windows share the text and differ only in the melody)."""
        hidden, mask = text_states if text_states is not None else self._text_states(text)
        informative = text is not None or chroma is not None
        use_cfg = informative and cfg_scale != 1
        states = self._project_text(hidden) * mask[..., None]
        if self.is_melody:
            cond = torch.cat([self._melody_states(chroma, 1), states], dim=1)
            prefix = cond
            if use_cfg:
                frames = chroma.shape[0] if chroma is not None else 1
                uncond = torch.cat([self._melody_states(None, frames), torch.zeros_like(states)], dim=1)
                prefix = torch.cat([cond, uncond], dim=0)
            return _Conditioning(prefix.shape[0], prefix)
        if use_cfg:
            states = torch.cat([states, torch.zeros_like(states)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        return _Conditioning(states.shape[0], states, mask)

    # ---------------------------------------------------------------- codec
    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, chunk_frames: int | None = None, context_frames: int = 50) -> torch.Tensor:
        """Waveform (channels, samples) at the model's rate and channel count -> codes (K, frames). Long
        prompts are encoded in chunks of ``chunk_frames`` with ``context_frames`` of overlap on each side,
        so memory stays bounded by one chunk."""
        pieces = [
            self._encode_all(wav[:, lo * self.hop : hi * self.hop])[:, start - lo : stop - lo]
            for start, stop, lo, hi in _chunks(wav.shape[-1] // self.hop, chunk_frames or self.window_frames, context_frames)
        ]
        return torch.cat(pieces, dim=-1) if pieces else torch.zeros(self.num_codebooks, 0, dtype=torch.long)

    def _encode_all(self, wav: torch.Tensor) -> torch.Tensor:
        codec = self.model.audio_encoder
        wav = wav.to(self.device, next(codec.parameters()).dtype)
        per_channel = [codec.encode(wav[c][None, None]).audio_codes[0, 0] for c in range(self.channels)]
        if self.channels == 1:
            return per_channel[0]
        codes = torch.stack(per_channel, dim=1)  # (K/2, 2, T): interleave L/R codebooks
        return codes.reshape(self.num_codebooks, -1)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, chunk_frames: int | None = None, context_frames: int = 50) -> torch.Tensor:
        """Codes (K, frames) -> waveform (channels, frames * hop), float32 on the CPU. Long sequences are
        decoded in chunks of ``chunk_frames`` with ``context_frames`` of overlap on each side, so memory stays
        bounded by one chunk."""
        pieces = [
            self._decode_all(codes[:, lo:hi])[:, (start - lo) * self.hop : (stop - lo) * self.hop]
            for start, stop, lo, hi in _chunks(codes.shape[-1], chunk_frames or self.window_frames, context_frames)
        ]
        return torch.cat(pieces, dim=-1)

    def _decode_all(self, codes: torch.Tensor) -> torch.Tensor:
        codec = self.model.audio_encoder
        codes = codes.to(self.device)
        channels = [codes] if self.channels == 1 else [codes[0::2], codes[1::2]]
        out = [codec.decode(c[None, None], audio_scales=[None]).audio_values[0, 0] for c in channels]
        return torch.stack(out).float().cpu()

    # ---------------------------------------------------------------- decoding
    def generate_window(
        self,
        cond: _Conditioning,
        prompt: torch.Tensor,
        n_new: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        on_step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Generate ``n_new`` frames after ``prompt`` (K, P) within one context window; returns (K, P + n_new).

        The delayed sequence has ``P + n_new + max_delay + 1`` columns: column 0 is the start token, codebook
        k holds frame t at column ``t + 1 + delay(k)``, and every other cell is the pad/start token. Prompt
        cells are forced, the rest are sampled one column per step."""
        K, P = prompt.shape
        N = P + n_new
        S = N + self.max_delay + 1
        device = self.device
        delays = self.delays.to(device)
        seq = torch.full((K, S), self.start_id, dtype=torch.long, device=device)
        cols = torch.arange(P, device=device)
        if P:
            seq[torch.arange(K, device=device)[:, None], cols[None] + 1 + delays[:, None]] = prompt.to(device)
        first_free = 1 + delays + P  # first column each codebook samples
        last_free = 1 + delays + N  # one past the last
        self.backend.start(cond, S)
        logits = self.backend.forward(seq[None, :, : P + 1].expand(cond.rows, -1, -1))
        for s in range(P + 1, S):
            scores = logits[0] if cond.rows == 1 else apply_cfg(logits[0], logits[1], params.cfg_scale)
            nxt = sample_next(scores, params, generator)
            free = (s >= first_free) & (s < last_free)
            seq[:, s] = torch.where(free, nxt, seq[:, s])
            if on_step is not None:
                on_step()
            if s < S - 1:
                logits = self.backend.forward(seq[None, :, s : s + 1].expand(cond.rows, -1, -1))
        idx = torch.arange(N, device=device)[None] + 1 + delays[:, None]
        return seq.gather(1, idx)

    def _plan(self, prompt_frames: int, n_new: int) -> list[tuple[int, int]]:
        """[(context frames, new frames)] for each window."""
        window, stride = self.window_frames, self.stride_frames
        ctx = min(prompt_frames, window - min(n_new, stride))
        plan, remaining = [], n_new
        while remaining > 0:
            n = min(remaining, window - ctx)
            plan.append((ctx, n))
            remaining -= n
            ctx = min(ctx + n, window - stride)
        return plan

    @torch.inference_mode()
    def generate(
        self,
        text: str | None,
        n_new: int,
        params: SamplingParams,
        generator: torch.Generator | None = None,
        prompt: torch.Tensor | None = None,
        melody: torch.Tensor | None = None,
        progress: Progress | None = None,
        on_window: Callable[[WindowEvent], None] | None = None,
    ) -> torch.Tensor:
        """Generate ``n_new`` frames of codes after ``prompt`` (K, P), conditioned on ``text`` and (melody
        checkpoints) a mono ``melody`` waveform at the model's rate. Returns the codes of the whole clip,
        prompt included: (K, P + n_new). Durations past one window are generated window by window."""
        K = self.num_codebooks
        prompt = torch.zeros(K, 0, dtype=torch.long) if prompt is None else prompt.long()
        plan = self._plan(prompt.shape[1], n_new)
        total_steps = sum(n + self.max_delay for _, n in plan)  # one decode step per column
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total_steps)

        windowed_melody = melody is not None and len(plan) > 1
        text_states = self._text_states(text)  # once: every window has the same text
        cond = None
        if not windowed_melody:
            chroma = self._chroma(melody, 0, None) if melody is not None else None
            cond = self.condition(text, chroma, params.cfg_scale, text_states)
        out = [prompt.to(self.device)]
        context = out[0]
        end = prompt.shape[1]  # frames of the clip so far (prompt included)
        for i, (ctx_len, n) in enumerate(plan):
            context = context[:, context.shape[1] - ctx_len :]
            if windowed_melody:  # the melody at the window's place in time
                chroma = self._chroma(melody, end - ctx_len, self.window_frames)
                cond = self.condition(text, chroma, params.cfg_scale, text_states)
            if len(plan) > 1:
                log.info("window %d/%d: %d frames of context, %d new frames", i + 1, len(plan), ctx_len, n)
            window = self.generate_window(cond, context, n, params, generator, step)
            out.append(window[:, ctx_len:])
            if on_window is not None:
                on_window(WindowEvent(i, len(plan), end - ctx_len, context, window[:, ctx_len:]))
            context = window
            end += n
        return torch.cat(out, dim=1)

    def _chroma(self, melody: torch.Tensor, offset_frames: int, length_frames: int | None) -> torch.Tensor:
        """Chroma of the melody for a window starting ``offset_frames`` into the output. One window uses the
        melody as is (at most one window long; the model tiles it). Later windows take the melody at the
        matching time, tiled when it is shorter (audiocraft's ``positions % length``)."""
        wav = melody.reshape(-1)
        if length_frames is None:
            wav = wav[: self.window_frames * self.hop]
        else:
            start = offset_frames * self.hop
            positions = torch.arange(start, start + length_frames * self.hop) % wav.numel()
            wav = wav[positions]
        return chroma_mod.chroma(wav, self.sample_rate)
