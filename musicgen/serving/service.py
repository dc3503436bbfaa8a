"""The predictor behind every surface (Cog, CLI, library): load once, then serve GenerationRequests.

A prediction is request -> audio in (``audio_io``) -> engine -> normalization -> output file; the engine
decides what it reads of the audio and how it generates."""

from __future__ import annotations

import logging
import shutil
import time
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from musicgen.audio import audio_io, normalize, output
from musicgen import hub
from musicgen.engine import loading
from musicgen.serving import memory, metrics
from musicgen.engine.engine import Engine, Progress, WindowEvent, WindowSettings
from musicgen.errors import MusicGenError, WeightsNotFoundError, reason
from musicgen.inputs import MAX_DURATION, spelled
from musicgen.serving.gpu_work import RequestWork
from musicgen.engine.quant import one_thread
from musicgen.request import GenerationRequest
from musicgen.serving.retention import OutputRetention
from musicgen.engine.sampling import SamplingParams
from musicgen.serving.scheduler import Scheduler
from musicgen.serving.stream import DEFAULT_CHUNK_SECONDS, AudioChunk, AudioStream, ChunkedAudio
from musicgen.settings import Settings
from musicgen.engine.stems import StemSeparator

log = logging.getLogger(__name__)


def _load_separator(settings: Settings, device: torch.device,
                    allow_download: bool) -> tuple[StemSeparator | None, str | None]:
    """(separator, None), or (None, the sentence melody requests fail with). Setup never fails because of
    the separation weights: text and continuation work without them."""
    if not settings.melody_stems:
        log.info("MUSICGEN_MELODY_STEMS=0: melody requests take the chroma of the raw mix")
        return None, None
    try:
        directory = hub.locate_stems(settings, allow_download=allow_download)
    except WeightsNotFoundError as exc:
        log.warning("%s", exc)
        return None, str(exc)
    started = time.monotonic()
    try:
        separator = StemSeparator.load(directory, device)
    except Exception as exc:  # damaged or foreign files: melody requests say so, the rest keeps working
        problem = (f"The melody stem separation weights in {directory} could not be loaded "
                   f"({reason(exc)}); run `make weights` "
                   "again, or set MUSICGEN_MELODY_STEMS=0 to follow the raw mix's melody.")
        log.warning("%s", problem)
        return None, problem
    log.info("loaded the melody stem separator (%s) from %s in %.1f s", ", ".join(separator.sources), directory,
             time.monotonic() - started)
    return separator, None


@dataclass(frozen=True)
class PredictionResult:
    """What a prediction produced: the files written, the seed used (to reproduce it) and where the time
    went, in seconds (``audio_in``: reading the input audio; ``generate``: decoding tokens and audio;
    ``output``: normalization and writing; ``total``)."""

    paths: list[Path]
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


class ProgressLog:
    """Logs progress in seconds of music about every 10 % (and at the end), with the speed."""

    def __init__(self, every: float = 0.1):
        self.every = every
        self.start = time.monotonic()
        self.next_mark = every

    def __call__(self, done: float, total: float) -> None:
        if done / total + 1e-9 >= self.next_mark or done >= total:
            elapsed = max(time.monotonic() - self.start, 1e-9)
            log.info("generating: %.1f/%.1f s of music (%3.0f%%), %.2f s of music per second", done, total,
                     100 * done / total, done / elapsed)
            self.next_mark = (int(done / total / self.every) + 1) * self.every


def _seconds(value: float) -> str:
    """Seconds for a log line: ``4`` or ``3.5``."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


_LOAD_PARAMETERS = {"device": "device", "precision": "precision", "concurrency": "concurrency",
                    "decoder": "decoder"}  # MusicGen.load's


class MusicGen:
    """A loaded checkpoint ready to serve requests."""

    def __init__(self, engine: Engine, name: str, stems_missing: str | None = None, slots: int = 1,
                 concurrency: int | None = None, memory_plan: memory.MemoryPlan | None = None,
                 settings: Settings | None = None, mbd=None):
        """``stems_missing``: why a melody checkpoint cannot separate melody stems (the sentence a melody
        request fails with), when stem separation is wanted and its weights could not be had. ``slots``:
        how many requests decode at once (``predict`` may be called from any number of threads; the others
        wait for a slot). ``concurrency``: how many predictions the server runs at once (Cog's
        COG_MAX_CONCURRENCY), which sets how long returned files are kept (``musicgen.serving.retention``).
        ``memory_plan``: on a GPU, the plan the slots come from; it also bounds the request-side work.
        ``settings``: the deployment's (its ``decoder`` is every request's unless one asks otherwise); ``mbd``:
        the MultiBand Diffusion decoder when loaded at setup (else loaded the first time a request asks)."""
        self.engine = engine
        self.name = name
        self.stems_missing = stems_missing
        self.memory_plan = memory_plan
        self.scheduler = Scheduler(engine, slots)
        weakref.finalize(self, self.scheduler.close)  # a dropped model's decode loop ends (and frees it)
        self.request_work = RequestWork(engine.device, memory_plan.request_workers if memory_plan else None)
        self.outputs = OutputRetention(self, concurrency)
        self.settings = settings or Settings.from_env()
        self._mbd, self._mbd_lock, self.allow_download = mbd, threading.Lock(), True

    def mbd(self):
        """The MultiBand Diffusion decoder, loaded once (WeightsNotFoundError with one sentence if its weights
        are not usable and cannot be downloaded)."""
        with self._mbd_lock:
            if self._mbd is None:
                self._mbd = _load_mbd(self.settings, self.allow_download, self.engine.device)
            return self._mbd

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str | None = None,
             windows: WindowSettings | None = None, allow_download: bool = True,
             precision: str | None = None, backend: str = "fast", compile: bool | None = None,
             settings: Settings | None = None, concurrency: int | None = None,
             decoder: str | None = None) -> MusicGen:
        """Load ``checkpoint`` (a directory), or the configured model; ``settings`` default to
        ``Settings.from_env()`` (MUSICGEN_*), and ``device``, ``precision``, ``compile``, ``concurrency``
        (requests decoded at once) and ``decoder`` (``encodec`` or ``mbd``) override them.
        With ``compile`` the fixed-shape decode step is compiled (and on CUDA recorded) by the scheduler at setup."""
        started = time.monotonic()
        settings = settings or Settings.from_env(device=device, precision=precision, compile=compile,
                                                 concurrency=concurrency, decoder=decoder,
                                                 names=_LOAD_PARAMETERS)
        path = hub.locate(settings, allow_download=allow_download and checkpoint is None,
                          directory=Path(checkpoint) if checkpoint is not None else None)
        dev = settings.torch_device()
        decode_precision = settings.decode_precision(dev)
        log.info("loading %s on %s ...", path, dev)  # the line that closes it gives the time it took
        free, total = torch.cuda.mem_get_info(dev) if dev.type == "cuda" else (0, 0)
        try:
            # the fast decoder converts the decoder's weights on their way to a GPU: they stay mapped on the CPU
            decoder_device = torch.device("cpu") if backend == "fast" and dev.type == "cuda" else None
            model, tokenizer = loading.load(path, dev, decoder_device, cache=settings.cache_dir)
            separator, stems_missing = None, None
            if model.config.model_type == "musicgen_melody":
                separator, stems_missing = _load_separator(settings, dev, allow_download)
            compile = settings.compile_on(dev)
            engine = Engine(model, tokenizer, windows, backend=backend, precision=decode_precision,
                            compile=compile, static_step=settings.fixed_step(dev), separator=separator)
            engine.release_reference_weights()
        except torch.OutOfMemoryError as exc:
            raise memory.does_not_fit(path.name, _card(dev), free, total, "loading its weights ran out of memory") from exc
        mbd = None
        if settings.decoder == "mbd":  # missing weights refuse setup, in one sentence; loaded before the plan
            mbd = _load_mbd(settings, allow_download, dev)
        plan = None
        if dev.type == "cuda" and backend == "fast":
            plan = _memory_plan(engine, path.name, settings, dev, free, total, stems=separator is not None, mbd=mbd)
        kind = "melody" if engine.is_melody else "text"
        log.info("loaded %s (%s model, %d codebooks, %d channel(s)) on %s, %s decoding in %s, in %.1f s",
                 path.name, kind, engine.num_codebooks, engine.channels, dev, backend, engine.precision,
                 time.monotonic() - started)
        slots = plan.slots if plan is not None else settings.slots(dev)
        log.info("decoding up to %d request(s) at once", slots)
        service = cls(engine, path.name, stems_missing, slots, settings.server_concurrency, plan, settings, mbd)
        service.allow_download = allow_download
        if mbd is not None:
            log.info("decoding tokens to audio with MultiBand Diffusion (MUSICGEN_DECODER=mbd)")
        return service

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    def _read_audio(self, req: GenerationRequest) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prompt_wav, melody_wav) of the request, decoded and checked, reading only what generation uses."""
        eng = self.engine
        if req.input_audio is None:
            return None, None
        if req.continuation:
            return audio_io.load_prompt(req.input_audio, req.continuation_start, req.end_seconds,
                                        eng.sample_rate, eng.channels, duration=req.duration,
                                        surface=req.surface), None
        if not eng.is_melody:
            raise MusicGenError(
                f"The loaded model {self.name} cannot follow a melody (it is not a melody checkpoint); "
                f"{'pass --continuation' if req.surface == 'cli' else 'set continuation=true'} to continue "
                f"{spelled('input_audio', req.surface)}, or deploy facebook/musicgen-melody."
            )
        if self.stems_missing is not None:
            raise MusicGenError(self.stems_missing)
        if eng.separator is None:
            log.info("MUSICGEN_MELODY_STEMS=0: the melody chroma is taken from the raw mix (drums and bass "
                     "included), not from Demucs' vocals + other stems")
        seconds = eng.melody_seconds(req.duration)
        log.info("melody: reading up to %.2f s of input_audio", seconds)
        return None, audio_io.load_melody(req.input_audio, seconds, eng.sample_rate, eng.channels, req.surface)

    def predict(self, req: GenerationRequest, output_dir: str | Path | None = None,
                progress: Progress | None = None,
                on_window: Callable[[WindowEvent], None] | None = None,
                cancel: threading.Event | None = None,
                on_audio: Callable[[AudioChunk], None] | None = None,
                chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> PredictionResult:
        """Generate the request's music and write it. ``progress`` gets (seconds of music generated, seconds
        to generate: ``duration``, less a continuation's prompt);
        ``on_window`` each generated window (its tokens and the melody chroma it was conditioned on);
        setting ``cancel`` stops the request (``Cancelled``) and frees its place at once; ``on_audio`` gets
        the audio while it is generated, a chunk (``AudioChunk``) every ``chunk_seconds`` of new audio, in
        this thread (``musicgen.serving.stream``; ``stream`` is the same as an iterator). Several threads may
        predict at once: their requests are decoded together (``musicgen.serving.scheduler``), each giving the bytes
        it gives alone.

        Pass ``output_dir`` (created if missing) to keep the files: they are the caller's, never removed.
        Without it the files go to a fresh temporary directory, removed no earlier than 60 s after this call
        returns and once as many later predictions have returned as the model runs at once, and at the latest
        when the model is collected or the process exits (``musicgen.serving.retention``)."""
        # A request's own torch work (text encoder, codec, separation) runs single-threaded, in its caller's
        # thread: the decode loop's thread is then the only one with an OpenMP thread team (a second team in
        # another thread made a decode step's small operations about 3x slower, measured on 2 cores:
        # libgomp throttles its spinning when teams outnumber the cores), and a request's bytes depend
        # neither on how many requests the deployment decodes at once nor on the machine's cores.
        with one_thread(), metrics.track(), self.outputs.prediction():
            result = self._predict(req, output_dir, progress, on_window, cancel, on_audio, chunk_seconds)
        metrics.generated(req.duration)
        return result

    def stream(self, req: GenerationRequest, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
               output_dir: str | Path | None = None, cancel: threading.Event | None = None) -> AudioStream:
        """The request's audio while it is generated: an iterator of ``AudioChunk`` (every ``chunk_seconds``
        of new audio, the last one flagged ``last``), decoded beside every other request in flight. Its
        ``result`` is the prediction's once the last chunk is taken (the file written as ``predict`` writes
        it, the same bytes); ``close()`` (or leaving a ``with`` block, or setting ``cancel``) before the end
        cancels the request."""
        return AudioStream(lambda on_audio, stop: self.predict(req, output_dir, cancel=stop, on_audio=on_audio,
                                                               chunk_seconds=chunk_seconds), cancel)

    def files(self, req: GenerationRequest, chunk_seconds: float = 0.0,
              cancel: threading.Event | None = None) -> Iterator[Path]:
        """The files a server returns for ``req``, each as soon as it is written: with ``chunk_seconds`` > 0,
        a WAV file of each chunk of audio while it is generated (``stream``: the model's output, clipped, not
        normalized), then the final file (always last, the same bytes as ``predict`` writes); else the final
        file alone. They share one temporary directory, kept as ``predict``'s are."""
        if not chunk_seconds:
            yield from self.predict(req, cancel=cancel).paths
            return
        directory = output.new_output_dir()
        try:
            with self.stream(req, chunk_seconds, output_dir=directory, cancel=cancel) as chunks:
                for index, chunk in enumerate(chunks):
                    yield output.write_audio(chunk.samples, chunk.sample_rate, directory, "wav", stem=f"chunk-{index:04d}")
            if chunks.result is not None:
                yield from chunks.result.paths
        finally:
            self.outputs.returned(directory)

    def serve_metrics(self, settings: Settings | None = None) -> None:
        """Serve Prometheus metrics (:mod:`musicgen.serving.metrics`) when MUSICGEN_METRICS_PORT is set, on
        MUSICGEN_METRICS_HOST (127.0.0.1 unless set)."""
        settings = settings or Settings.from_env()
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, self.scheduler.slots, self.memory_plan, settings.metrics_host)

    @staticmethod
    def request(**inputs) -> GenerationRequest:
        """The :class:`GenerationRequest` of a server's inputs; inputs refused here count as a failed
        prediction in the metrics, as those refused while it runs do."""
        try:
            return GenerationRequest(**inputs)
        except MusicGenError:
            metrics.refused()
            raise

    def _predict(self, req: GenerationRequest, output_dir: str | Path | None, progress: Progress | None,
                 on_window: Callable[[WindowEvent], None] | None, cancel: threading.Event | None,
                 on_audio: Callable[[AudioChunk], None] | None, chunk_seconds: float) -> PredictionResult:
        eng = self.engine
        started = time.monotonic()
        if output_dir is not None:  # the caller's: made now, before any work, and never removed
            output_dir = output.user_output_dir(output_dir)
        seed = req.resolve_seed()
        log.info("model %s, seed %d", self.name, seed)
        decoder = req.decoder or self.settings.decoder
        if decoder == "mbd" and on_audio is not None:
            raise MusicGenError("MultiBand Diffusion decodes the whole clip once its tokens are done, so it cannot "
                                "be streamed: turn streaming off, or use decoder=encodec to stream.")
        mbd = self.mbd() if decoder == "mbd" else None
        if not req.continuation and (req.continuation_start != 0 or req.end_seconds is not None):
            log.info("continuation_start/continuation_end are ignored because continuation is false")
        eng.check_text(req.text)
        prompt_wav, melody_wav = self._read_audio(req)
        read = time.monotonic()
        new_s = float(req.duration)
        if prompt_wav is not None:
            prompt_s = prompt_wav.shape[-1] / eng.sample_rate
            new_s -= prompt_s
            log.info("continuation: %s s prompt + %s s new", _seconds(prompt_s), _seconds(new_s))
        report = progress or ProgressLog()

        def music_progress(done: int, total: int) -> None:  # decode steps, as seconds of new music
            report(new_s * done / total, new_s)

        generator = torch.Generator(device=eng.device).manual_seed(seed)
        with self.request_work():  # text encoder, prompt codes, stems, each window's chroma
            sequence = eng.sequence(req.text, req.duration, SamplingParams.of(req), generator,
                                    prompt_wav=prompt_wav, melody_wav=melody_wav,
                                    progress=music_progress, on_window=on_window)
        self.request_work.hand_off(sequence.tensors())
        chunks = None
        if on_audio is not None:  # the prompt's audio first, then each run of frames as the loop completes it
            chunks = ChunkedAudio(eng.codec, on_audio)

            def on_frames(frames: torch.Tensor) -> None:
                with self.request_work():  # in this thread, beside the decode loop
                    chunks.frames(frames)

            sequence.stream(on_frames, max(1, round(chunk_seconds * eng.frame_rate)))
            on_frames(sequence.out[0])
        codes = self.scheduler.run(sequence, cancel)
        decoded = time.monotonic()
        with self.request_work():
            if chunks is not None:
                chunks.finish()
            wav = eng.decode(codes)
            if mbd is not None:  # its noise from the request's generator: a seed gives the same file
                wav = mbd.decode_codes(eng.codec.model.quantizer, codes, wav, generator)
        generated = time.monotonic()
        log.info("tokens %.1f s, audio decoding %.1f s", decoded - read, generated - decoded)

        wav = normalize.normalize(wav.numpy(), eng.sample_rate, req.normalization_strategy)
        fresh = output_dir is None
        if fresh:
            output_dir = output.new_output_dir()
        try:
            path = output.write_audio(wav, eng.sample_rate, output_dir, req.output_format, stem=f"musicgen-{seed}")
        except BaseException:
            if fresh:
                shutil.rmtree(output_dir, ignore_errors=True)
            raise
        if fresh:
            self.outputs.returned(output_dir)
        done = time.monotonic()
        timings = {"audio_in": read - started, "generate": generated - read, "output": done - generated,
                   "total": done - started}
        log.info("generated %.2f s of audio: generation %.1f s, total %.1f s",
                 wav.shape[-1] / eng.sample_rate, timings["generate"], timings["total"])
        return PredictionResult([path], seed, timings)

    def release_outputs(self) -> None:
        """Remove the directories of the recent predictions' files now."""
        self.outputs.release()


def _card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def _memory_plan(engine: Engine, checkpoint: str, settings: Settings, device: torch.device, free: int, total: int,
                 stems: bool, mbd=None) -> memory.MemoryPlan:
    """Slots for the card's free memory once the weights are in (``musicgen.serving.memory``): what is free now (after
    returning the loading's cached blocks, and whatever other processes hold) plus the weights (MBD's too when it
    is the deployment's decoder, with its decode of the longest clip as request-side work), at most what was
    free before loading."""
    shapes = memory.ModelShapes.of(engine.model.config, engine.window_frames)
    state_bytes = engine.backend.decoder.state_dtype.itemsize
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device)
    free = min(free, torch.cuda.mem_get_info(device)[0] + weights)
    plan = memory.plan(per_slot=memory.slot_bytes(shapes, state_bytes), weights=weights, free=free, total=total,
                       prefill=memory.prefill_bytes(shapes, state_bytes),
                       per_request_work=memory.request_bytes(shapes, stems, _mbd_bytes(mbd, engine.sample_rate)),
                       cap=settings.slots(device),
                       checkpoint=checkpoint, card=_card(device))
    log.info("memory plan on %s: %s", _card(device), plan.describe())
    return plan


def _load_mbd(settings: Settings, allow_download: bool, device: torch.device):
    """The MultiBand Diffusion decoder on ``device`` (WeightsNotFoundError with one sentence if its weights are
    not usable and cannot be downloaded)."""
    from musicgen.engine.mbd import MultiBandDiffusion

    return MultiBandDiffusion.load(hub.locate_mbd(settings, allow_download), device)


def _mbd_bytes(mbd, sample_rate: int) -> int:
    """MultiBand Diffusion's working memory for the longest clip a request may ask for (0 without MBD)."""
    return mbd.working_bytes(MAX_DURATION * sample_rate) if mbd is not None else 0
