"""Streaming: a request's audio handed out while it is generated (``MusicGen.stream``, ``predict(on_audio=...)``).

The decode loop hands each request's completed frames on (``Sequence.stream``); the request's own thread
decodes them to audio with EnCodec run incrementally (``musicgen.engine.streaming``: the same audio as the
whole-clip decode, to float rounding) and hands out a chunk every ``chunk_seconds`` of new audio. Chunks are
the model's output as decoded, clipped to [-1, 1]: loudness normalization needs the whole clip, so it applies
to the final file only, which is written exactly as without streaming.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from musicgen.engine.streaming import StreamingDecoder

DEFAULT_CHUNK_SECONDS = 1.0


@dataclass(frozen=True)
class AudioChunk:
    """Audio of a request as it is generated."""

    samples: np.ndarray  # (channels, n) float32 in [-1, 1], before normalization
    sample_rate: int
    start: float  # seconds into the clip (a continuation's prompt comes first, from 0)
    last: bool  # the clip's last chunk: the stream ends after it


class ChunkedAudio:
    """The caller's side of one streaming request: frames in (``frames``: the prompt first, then each run of new
    frames the decode loop hands on, ``chunk_seconds`` of them at a time), and out to ``on_audio`` at once
    whatever audio they made final: about a chunk each time (the first one 7 frames short, held back as the
    decoder's look-ahead, which the last one brings)."""

    def __init__(self, codec, on_audio: Callable[[AudioChunk], None]):
        self.decoder = StreamingDecoder(codec)
        self.sample_rate, self.on_audio = codec.sample_rate, on_audio
        self.sent = 0  # samples handed out

    def frames(self, codes: torch.Tensor) -> None:
        self._hand_out(self.decoder.push(codes), last=False)

    def finish(self) -> None:
        self._hand_out(self.decoder.finish(), last=True)

    def _hand_out(self, audio: torch.Tensor, last: bool) -> None:
        if audio.shape[-1] or last:
            start, self.sent = self.sent, self.sent + audio.shape[-1]
            self.on_audio(AudioChunk(audio.clamp(-1, 1).numpy(), self.sample_rate, start / self.sample_rate, last))


class AudioStream:
    """The chunks of one request as an iterator (``MusicGen.stream``); ``result`` is the prediction's
    (``PredictionResult``: the final file) once the last chunk has been taken. Closing it early (``close``,
    or leaving a ``for`` loop over it) cancels the request: its place in the decode loop goes to the next one
    at the next step."""

    _END = object()

    def __init__(self, run: Callable[[Callable[[AudioChunk], None], threading.Event], object],
                 cancel: threading.Event | None = None):
        """``run(on_audio, cancel)``: the prediction, called in a thread of its own; returns its result.
        ``cancel``: an event that stops it as ``close`` does (set from any thread)."""
        self.result = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = cancel or threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(run,), name="musicgen-stream", daemon=True)
        self._thread.start()

    def _work(self, run) -> None:
        try:
            self.result = run(self._queue.put, self._cancel)
        except BaseException as exc:  # handed to the consumer
            self._error = exc
        finally:
            self._queue.put(self._END)

    def __iter__(self) -> Iterator[AudioChunk]:
        return self

    def __next__(self) -> AudioChunk:
        item = self._queue.get()
        if item is self._END:
            self._thread.join()
            if self._error is not None and not self._cancel.is_set():
                raise self._error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the request (if still running) and wait for its thread."""
        self._cancel.set()
        self._thread.join()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._cancel.set()
