"""The predictor behind every surface (Cog, CLI, library): load once, then serve GenerationRequests."""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from . import audio_io, chroma, normalize, output, weights
from .engine import Engine, Progress, WindowSettings
from .errors import MusicGenError
from .request import GenerationRequest
from .sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The audio inputs of a request, decoded and checked."""

    prompt_wav: torch.Tensor | None = None  # continuation prompt (channels, samples), whole codec frames
    melody_wav: torch.Tensor | None = None  # mono melody (samples,)


class ProgressLog:
    """Logs decode progress about every 10 % (and at the end) with the decoding speed."""

    def __init__(self, every: float = 0.1):
        self.every = every
        self.start = time.monotonic()
        self.next_mark = every

    def __call__(self, done: int, total: int) -> None:
        if done / total + 1e-9 >= self.next_mark or done == total:
            elapsed = max(time.monotonic() - self.start, 1e-9)
            log.info("generating: %d/%d steps (%3.0f%%), %.1f steps/s", done, total, 100 * done / total, done / elapsed)
            self.next_mark = (int(done / total / self.every) + 1) * self.every


class MusicGen:
    """A loaded checkpoint ready to serve requests."""

    def __init__(self, engine: Engine, name: str):
        self.engine = engine
        self.name = name
        # removes the last prediction's directory: when the next one starts, or when this object is
        # collected, or at exit (weakref.finalize covers the last two without keeping the model alive)
        self._remove_last_outputs: weakref.finalize | None = None

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str | None = None,
             windows: WindowSettings | None = None, allow_download: bool = True,
             precision: str | None = None, backend: str = "fast", compile: bool | None = None) -> MusicGen:
        """Load ``checkpoint`` (a directory), or the configured model (MUSICGEN_MODEL / MUSICGEN_WEIGHTS),
        on ``device`` (MUSICGEN_DEVICE) decoding in ``precision`` (MUSICGEN_PRECISION), the decode step
        compiled when ``compile`` (MUSICGEN_COMPILE=1); compiling happens here, in a warm-up generation."""
        started = time.monotonic()
        path = Path(checkpoint) if checkpoint is not None else weights.locate(allow_download=allow_download)
        if not weights.is_checkpoint(path):
            raise weights.WeightsNotFoundError(
                f"No MusicGen checkpoint (config.json + *.safetensors) in {path}: run `make weights` or point "
                "MUSICGEN_WEIGHTS at a checkpoint directory."
            )
        dev = weights.pick_device(device)
        precision = weights.pick_precision(dev, precision)
        model, tokenizer = weights.load(path, dev)
        if compile is None:
            compile = weights.env_flag("MUSICGEN_COMPILE")
        engine = Engine(model, tokenizer, windows, backend=backend, precision=precision, compile=compile)
        engine.release_reference_weights()
        if compile and backend == "fast":
            warm = time.monotonic()
            try:
                # a request's shapes: a text prompt with classifier-free guidance (two batch rows)
                engine.generate("warm up", engine.frame_rate, SamplingParams(temperature=0.0))
                log.info("compiled the decode step in %.1f s", time.monotonic() - warm)
            except Exception as exc:  # a compiler failure must not take the service down: decode eagerly
                engine.disable_compile()
                log.warning("compiling the decode step failed after %.1f s (%s: %s); decoding without "
                            "torch.compile", time.monotonic() - warm, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        kind = "melody" if engine.is_melody else "text"
        log.info("loaded %s (%s model, %d codebooks, %d channel(s)) on %s, %s decoding in %s, in %.1f s",
                 path.name, kind, engine.num_codebooks, engine.channels, dev, backend, engine.precision,
                 time.monotonic() - started)
        return cls(engine, path.name)

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    # ------------------------------------------------------------------ inputs
    def prepare(self, req: GenerationRequest) -> Prepared:
        """Decode and check the request's audio (melody or continuation prompt), reading only the part of
        the file that generation can use."""
        if req.input_audio is None:
            return Prepared()
        if req.continuation:
            return Prepared(prompt_wav=self._prompt(req))
        return Prepared(melody_wav=self._melody(req))

    def _melody(self, req: GenerationRequest) -> torch.Tensor:
        eng = self.engine
        if not eng.is_melody:
            raise MusicGenError(
                f"The loaded model {self.name} cannot follow a melody (it is not a melody checkpoint); "
                "set continuation=true to continue input_audio, or deploy facebook/musicgen-melody."
            )
        info = audio_io.probe(req.input_audio)
        # windows read the melody at their own time offset, so at most the output's length is ever used
        data = audio_io.read(info, 0.0, max(float(req.duration), eng.windows.window_s))
        audio_io.check_length(data.shape[1] / info.sample_rate, "input_audio")
        wav = audio_io.to_model(data, info, eng.sample_rate, 1)[0]
        if not chroma.is_informative(wav):
            raise MusicGenError(
                "input_audio is silent, so it has no melody to follow; upload audio with an audible melody, "
                "or leave input_audio empty to generate from the prompt alone."
            )
        return wav

    def _prompt(self, req: GenerationRequest) -> torch.Tensor:
        eng = self.engine
        info = audio_io.probe(req.input_audio)
        start, end, total = req.continuation_start, req.end_seconds, info.seconds

        def start_past_end(length: str = "") -> MusicGenError:
            return MusicGenError(
                f"continuation_start ({start} s) is at or past the end of input_audio{length}; "
                "choose an earlier start."
            )

        if total is not None and start >= total:
            raise start_past_end(f" ({total:.2f} s long)")
        if end is not None and total is not None and end > total:
            log.info("continuation_end %d s is past the clip's end (%.2f s); using the end of the clip", end, total)
            end = None
        limit = audio_io.MAX_PROMPT_SECONDS
        # with an unknown length, read one second past the limit to find out whether it is exceeded
        data = audio_io.read(info, start, start + limit + 1 if end is None else end)
        seconds = data.shape[1] / info.sample_rate
        if data.shape[1] == 0 and start > 0:  # the container did not say how long it is
            raise start_past_end()
        if seconds > limit:
            raise MusicGenError(
                f"The continuation prompt (input_audio from {start} s to {'its end' if end is None else f'{end} s'}) "
                f"is longer than the {limit} s limit; choose a shorter part with continuation_start and "
                "continuation_end."
            )
        audio_io.check_length(seconds, "The continuation prompt")
        wav = audio_io.to_model(data, info, eng.sample_rate, eng.channels)
        usable = (wav.shape[-1] // eng.hop) * eng.hop
        if usable != wav.shape[-1]:
            log.info("continuation prompt trimmed by %d samples at its start to whole codec frames",
                     wav.shape[-1] - usable)
        return wav[:, wav.shape[-1] - usable :]

    # ------------------------------------------------------------------ predict
    def predict(self, req: GenerationRequest, output_dir: str | Path | None = None,
                progress: Progress | None = None) -> list[Path]:
        """Generate the request's music and write it; returns the written file paths.

        Without ``output_dir`` each call writes into a fresh temporary directory, and the previous call's
        directory is removed (its files have been handed over by then)."""
        eng = self.engine
        seed = req.resolve_seed()
        log.info("model %s, seed %d", self.name, seed)
        if not req.continuation and (req.continuation_start != 0 or req.end_seconds is not None):
            log.info("continuation_start/continuation_end are ignored because continuation is false")
        prepared = self.prepare(req)

        started = time.monotonic()
        generator = torch.Generator(device=eng.device).manual_seed(seed)
        params = SamplingParams(req.temperature, req.top_k, req.top_p, float(req.classifier_free_guidance))
        prompt_codes = eng.encode(prepared.prompt_wav) if prepared.prompt_wav is not None else None
        n_new = req.duration * eng.frame_rate
        codes = eng.generate(req.text, n_new, params, generator, prompt=prompt_codes,
                             melody=prepared.melody_wav, progress=progress or ProgressLog())
        generated = time.monotonic()
        wav = eng.decode(codes).numpy()
        wav = normalize.normalize(wav, eng.sample_rate, req.normalization_strategy)
        decoded = time.monotonic()

        if output_dir is None:
            self.release_outputs()
            output_dir = output.new_output_dir()
            self._remove_last_outputs = weakref.finalize(self, shutil.rmtree, output_dir, True)
        path = output.write_audio(wav, eng.sample_rate, output_dir, req.output_format, stem=f"musicgen-{seed}")
        log.info("wrote %s (%.2f s of audio): generation %.1f s, decoding %.1f s, total %.1f s",
                 path.name, wav.shape[-1] / eng.sample_rate, generated - started, decoded - generated,
                 time.monotonic() - started)
        return [path]

    def release_outputs(self) -> None:
        """Remove the directory of the last prediction's files. Cog has uploaded or encoded them by the
        time the next prediction starts, which is when this runs (and at exit)."""
        if self._remove_last_outputs is not None:
            self._remove_last_outputs()
            self._remove_last_outputs = None
