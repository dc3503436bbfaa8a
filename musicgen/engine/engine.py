"""The generation engine: waveforms in, waveforms out.

It owns everything between the audio a request brings and the audio it gets back: checking a continuation
prompt against the output's length and encoding it, the melody's chroma at each window's place in time (and how
much of the melody file that needs), the conditioning and classifier-free guidance, the codebook delay
pattern and prompt forcing, token-by-token decoding over a :class:`~musicgen.engine.backends.Backend`, windows past
the model's 30 s context (audiocraft's extend scheme), and the EnCodec round trip.

It runs its own decode loop (not transformers' ``generate()``), so sampling follows audiocraft exactly, seeds
go through a per-request ``torch.Generator``, and a progress callback runs between decode steps (where Cog
can also cancel the prediction).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from musicgen.engine import chroma as chroma_mod
from musicgen.audio.audio_io import convert_channels, prompt_too_long
from musicgen.engine.backends import Backend, FastBackend, ReferenceBackend
from musicgen.engine.codec import Codec
from musicgen.engine.conditioning import Conditioner
from musicgen.engine.sampling import SamplingParams
from musicgen.engine.sequence import Cancelled, Sequence, WindowEvent
from musicgen.engine.stems import StemSeparator

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (decode steps done, decode steps in total)


@dataclass(frozen=True)
class WindowSettings:
    """Long generation (audiocraft's extend scheme): windows of ``window_s`` seconds; each next window is
    prompted with the last ``window_s - stride_s`` seconds of tokens already generated."""

    window_s: float = 30.0
    stride_s: float = 18.0


class Engine:
    def __init__(self, model, tokenizer, windows: WindowSettings | None = None, backend: str = "fast",
                 precision: str = "fp32", compile: bool = False, static_step: bool | None = None,
                 separator: StemSeparator | None = None, compile_backend="inductor"):
        """``backend`` "fast" decodes with ``musicgen.engine.decoder`` in ``precision`` (fp32, bf16, fp16, int8,
        int4), its decode step optionally through ``torch.compile`` and with fixed shapes (``static_step``,
        default: when compiling on CUDA, for CUDA graphs); "reference" runs transformers' own modules in
        the checkpoint's dtype (for parity checks). ``separator``: melody checkpoints take the chroma of
        the melody's ``vocals`` + ``other`` stems (audiocraft's); without one, of the raw mix.
        ``compile_backend``: what ``torch.compile`` compiles with (inductor; another backend for tests)."""
        self.model = model.eval()
        self.separator = separator
        self.windows = windows or WindowSettings()
        cfg = model.config
        self.conditioner = Conditioner(model, tokenizer)
        self.is_melody = self.conditioner.is_melody
        self.num_codebooks = int(model.decoder.num_codebooks)
        self.channels = int(cfg.decoder.audio_channels)
        self.codec = Codec(model.audio_encoder, self.channels, self.num_codebooks, chunk_frames=self.window_frames)
        gen = model.generation_config
        self.start_id = int(gen.decoder_start_token_id if gen.decoder_start_token_id is not None else cfg.decoder.bos_token_id)
        # codebook k is delayed by its index within its channel; stereo interleaves L/R codebooks
        self.delays = torch.tensor([k // self.channels for k in range(self.num_codebooks)])
        self.max_delay = self.num_codebooks // self.channels - 1
        self.backend: Backend
        if backend == "fast":
            # on the device of the rest of the model (the transformers decoder may stay mapped on the CPU)
            self.backend = FastBackend(model.decoder, precision, compile, static_step,
                                       window_len=self.window_frames + self.max_delay + 1,
                                       compile_backend=compile_backend, device=self.codec.device)
            if precision != "fp32":  # fp32 stays the parity reference: every position computed, as transformers does
                self.backend.decoder.share_prefix(self.conditioner.null_prefix())
        elif backend == "reference":
            self.backend = ReferenceBackend(model.decoder)
        else:
            raise ValueError(f"backend must be 'fast' or 'reference', got {backend!r}")
        self.precision = precision if backend == "fast" else "fp32"

    def disable_compile(self) -> None:
        """Decode with the eager step from now on (when ``torch.compile`` fails on this machine)."""
        if isinstance(self.backend, FastBackend):
            self.backend.decoder.disable_compile()

    def release_reference_weights(self) -> None:
        """Drop the transformers decoder's own layer, embedding and head weights once the fast backend holds
        its copy, so a served model keeps one set of decoder weights in memory (the reference backend
        cannot run afterwards)."""
        if not isinstance(self.backend, FastBackend):
            return
        inner = self.model.decoder.model.decoder
        inner.layers = torch.nn.ModuleList()
        inner.embed_tokens = torch.nn.ModuleList()
        self.model.decoder.lm_heads = torch.nn.ModuleList()

    @property
    def device(self) -> torch.device:
        return self.codec.device

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.codec.frame_rate

    @property
    def window_frames(self) -> int:
        return int(round(self.windows.window_s * self.model.config.audio_encoder.frame_rate))

    @property
    def stride_frames(self) -> int:
        return int(round(self.windows.stride_s * self.model.config.audio_encoder.frame_rate))

    # ---------------------------------------------------------------- what the engine reads
    def check_text(self, text: str | None) -> None:
        """Refuse a prompt longer than the text encoder reads (one sentence, no model work)."""
        self.conditioner.check_text(text)

    def check_prompt(self, wav: torch.Tensor, seconds: int) -> None:
        """Refuse a continuation prompt (channels, samples) that leaves no new frame in an output of
        ``seconds`` (the whole clip, prompt included): audiocraft refuses a prompt whose codes are not
        shorter than ``duration``. One sentence, no model work."""
        frames = self.codec.frames(wav.shape[-1])
        if frames >= seconds * self.frame_rate:
            raise prompt_too_long(frames / self.frame_rate, seconds)

    # ---------------------------------------------------------------- codec
    def encode(self, wav: torch.Tensor, chunk_frames: int | None = None, context_frames: int | None = None) -> torch.Tensor:
        """Waveform (channels, samples) at the model's rate -> codes (K, ceil(samples / hop)), every sample coded."""
        return self.codec.encode(wav, chunk_frames, context_frames)

    def decode(self, codes: torch.Tensor, chunk_frames: int | None = None, context_frames: int | None = None) -> torch.Tensor:
        """Codes (K, frames) -> waveform (channels, frames * hop), float32 on the CPU."""
        return self.codec.decode(codes, chunk_frames, context_frames)

    # ---------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, text: str | None, seconds: int, params: SamplingParams, generator: torch.Generator | None = None,
                 prompt_wav: torch.Tensor | None = None, melody_wav: torch.Tensor | None = None,
                 progress: Progress | None = None,
                 on_window: Callable[[WindowEvent], None] | None = None) -> torch.Tensor:
        """``seconds`` of music in all: ``prompt_wav`` (channels, samples at the model's rate), when given,
        continued up to that length (audiocraft's ``duration``, the prompt included; a prompt not shorter
        is refused), conditioned on ``text`` and (melody checkpoints) ``melody_wav`` at the model's rate
        (at least ``melody_seconds(seconds)`` of it when the melody is that long). Returns the waveform of
        the whole clip, prompt included: (channels, seconds * sample_rate), float32 on the CPU."""
        started = time.monotonic()
        sequence = self.sequence(text, seconds, params, generator, prompt_wav=prompt_wav, melody_wav=melody_wav,
                                 progress=progress, on_window=on_window)
        codes = self.run(sequence)
        tokens = time.monotonic()
        wav = self.decode(codes)
        log.info("tokens %.1f s, audio decoding %.1f s", tokens - started, time.monotonic() - tokens)
        return wav

    @torch.inference_mode()
    def sequence(self, text: str | None, seconds: int, params: SamplingParams,
                 generator: torch.Generator | None = None, prompt_wav: torch.Tensor | None = None,
                 melody_wav: torch.Tensor | None = None, progress: Progress | None = None,
                 on_window: Callable[[WindowEvent], None] | None = None,
                 note: Callable[[str], None] | None = None) -> Sequence:
        """A request's generation of ``seconds`` in all, prompt included, ready to decode (``run`` it, or
        hand it to a scheduler): the prompt checked and encoded whole, the text encoded, the melody's chroma
        source separated."""
        n_new, prompt_codes = seconds * self.frame_rate, None
        if prompt_wav is not None:
            self.check_prompt(prompt_wav, seconds)
            prompt_codes = self.encode(prompt_wav)
            n_new -= prompt_codes.shape[1]
        return self._sequence(text, n_new, params, generator, prompt_codes, melody_wav, progress, on_window, note)

    def _sequence(self, text, n_new, params, generator, prompt_codes, melody_wav, progress, on_window,
                  note) -> Sequence:
        melody = self.melody_source(melody_wav) if melody_wav is not None else None
        return Sequence(self, self.conditioner.encode_text(text), n_new, params, generator, prompt_codes, melody,
                        progress, on_window, note or log.info)

    @torch.inference_mode()
    def run(self, sequence: Sequence, cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
        """Decode a sequence to its end on this engine's backend; its codes (K, P + n_new). ``cancelled``
        is asked before every step (True: ``Cancelled``)."""
        while not sequence.done:
            window = sequence.next_window()
            self.backend.start(window.cond, window.length)
            sequence.consume(self.backend.prefill(window.prefill_ids()))
            while not window.done:
                if cancelled is not None and cancelled():
                    raise Cancelled("cancelled")
                sequence.consume(self.backend.step(window.step_ids()))
            sequence.finish_window()
        return sequence.codes()

    def plan(self, prompt_frames: int, n_new: int) -> list[tuple[int, int]]:
        """[(context frames, new frames)] for each window, as audiocraft's ``_generate_tokens`` lays them out:
        a prompt shorter than a window is the whole context of the first window, which fills up the window
        with new frames; every later window is prompted with the last ``window - stride`` frames. A prompt
        of a whole window or more keeps its most recent part, leaving room for up to a stride of new frames."""
        window, stride = self.window_frames, self.stride_frames
        ctx = prompt_frames if prompt_frames < window else window - min(n_new, stride)
        plan, remaining = [], n_new
        while remaining > 0:
            n = min(remaining, window - ctx)
            plan.append((ctx, n))
            remaining -= n
            ctx = min(ctx + n, window - stride)
        return plan

    def melody_seconds(self, seconds: int) -> float:
        """How much of a melody, from its start, generating ``seconds`` of music reads: each window takes a
        window's length of melody from its own place in time, so up to the last window's start plus one
        window (tiled where the melody is shorter)."""
        starts, end = [], 0
        for ctx, n in self.plan(0, seconds * self.frame_rate):
            starts.append(end - ctx)
            end += n
        return (max(starts) + self.window_frames) / self.frame_rate

    @torch.inference_mode()
    def generate_codes(
        self,
        text: str | None,
        n_new: int,
        params: SamplingParams,
        generator: torch.Generator | None = None,
        prompt_codes: torch.Tensor | None = None,
        melody_wav: torch.Tensor | None = None,
        progress: Progress | None = None,
        on_window: Callable[[WindowEvent], None] | None = None,
    ) -> torch.Tensor:
        """Generate ``n_new`` frames of codes after ``prompt_codes`` (K, P), conditioned on ``text`` and
        (melody checkpoints) ``melody_wav`` ((channels, samples) or (samples,)) at the model's rate. Returns
        the codes of the whole clip, prompt included: (K, P + n_new). Durations past one window are generated
        window by window."""
        return self.run(self._sequence(text, n_new, params, generator, prompt_codes, melody_wav, progress,
                                       on_window, None))

    def melody_source(self, melody_wav: torch.Tensor) -> torch.Tensor:
        """What the chroma is computed on, mono (samples,): the ``vocals`` + ``other`` stems of the melody
        with a separator, else the melody itself (its channels averaged)."""
        wav = melody_wav if melody_wav.dim() == 2 else melody_wav[None]
        if self.separator is not None:
            return self.separator.melody(wav, self.sample_rate)
        return convert_channels(wav.float(), 1)[0]

    def melody_chroma(self, melody: torch.Tensor, offset_frames: int, length_frames: int | None) -> torch.Tensor:
        """Chroma of a mono melody (``melody_source``) for a window starting ``offset_frames`` into the
        output. One window uses the melody as is (at most one window long; the model tiles it). Later windows
        take the melody at the matching time, tiled when it is shorter (audiocraft's ``positions % length``)."""
        wav = melody.reshape(-1)
        hop = self.codec.hop
        if length_frames is None:
            wav = wav[: self.window_frames * hop]
        else:
            start = offset_frames * hop
            wav = wav[torch.arange(start, start + length_frames * hop) % wav.numel()]
        return chroma_mod.chroma(wav, self.sample_rate)
