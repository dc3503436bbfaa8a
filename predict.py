"""Cog predictor for MusicGen: the 13 inputs of docs/api.md, handed to the musicgen library. Predictions run
concurrently (an async predict): the library decodes the requests in flight together. The output is an
iterator of files (Cog streams each one as it is yielded): the one final file, or with MUSICGEN_STREAM_CHUNK_S
set a file per chunk of audio while it is generated and the final file last (docs/api.md, "Streaming").

The inputs are defined once, in ``musicgen/inputs.py``. Their ``Input(...)`` arguments are repeated here as
plain literals because ``cog build`` reads them from this file's source without running it: its static schema
generator takes a description only as one string literal (no implicit concatenation), ``ge``/``le`` only as
number literals, and fails on ``choices`` it cannot resolve. tests/test_project.py checks both rules and that
the values agree with ``musicgen/inputs.py``.
"""

import asyncio
import logging
import sys
import threading
from typing import AsyncIterator, Optional

from cog import BasePredictor, Input, Path, concurrent, streaming

from musicgen.serving.service import MusicGen
from musicgen.settings import Settings


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load the configured checkpoint (MUSICGEN_MODEL / MUSICGEN_WEIGHTS / MUSICGEN_DEVICE / ...)."""
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
        settings = Settings.from_env()
        self.musicgen = MusicGen.load(settings=settings)
        self.stream_chunk_s = settings.stream_chunk_s
        self.musicgen.serve_metrics()  # Prometheus metrics for autoscaling, when MUSICGEN_METRICS_PORT is set

    # The most predictions Cog runs at once (cog.yaml's concurrency.max says the same; COG_MAX_CONCURRENCY
    # overrides both at run time, and MUSICGEN_CONCURRENCY, else COG_MAX_CONCURRENCY, sets how many the model
    # decodes together: docs/api.md). They are decoded together by the library's scheduler.
    @streaming
    @concurrent(max=8)
    async def predict(
        self,
        prompt: Optional[str] = Input(
            description="A description of the music you want to generate.", default=None
        ),
        input_audio: Optional[Path] = Input(
            description="An audio file that will influence the generated music. If `continuation` is `True`, the generated music will be a continuation of the audio file. Otherwise, the generated music will mimic the audio file's melody.",
            default=None,
        ),
        duration: int = Input(description="Duration of the generated audio in seconds.", default=8, ge=1, le=300),
        continuation: bool = Input(
            description="If `True`, generated music will continue from `input_audio`. Otherwise, generated music will mimic `input_audio`'s melody.",
            default=False,
        ),
        continuation_start: int = Input(
            description="Start time of the audio file to use for continuation.", default=0, ge=0
        ),
        continuation_end: Optional[int] = Input(
            description="End time of the audio file to use for continuation. If -1 or None, will default to the end of the audio clip.",
            default=None, ge=-1,
        ),
        normalization_strategy: str = Input(
            description="Strategy for normalizing audio.", default="loudness",
            choices=["loudness", "clip", "peak", "rms"],
        ),
        top_k: int = Input(description="Reduces sampling to the k most likely tokens.", default=250, ge=0),
        top_p: float = Input(
            description="Reduces sampling to tokens with cumulative probability of p. When set to `0` (default), top_k sampling is used.",
            default=0.0, ge=0.0, le=1.0,
        ),
        temperature: float = Input(
            description="Controls the 'conservativeness' of the sampling process. Higher temperature means more diversity.",
            default=1.0, ge=0.0,
        ),
        classifier_free_guidance: int = Input(
            description="Increases the influence of inputs on the output. Higher values produce lower-varience outputs that adhere more closely to inputs.",
            default=3, ge=0,
        ),
        output_format: str = Input(
            description="Output format for generated audio.", default="wav", choices=["wav", "mp3"]
        ),
        seed: Optional[int] = Input(
            description="Seed for random number generator. If None or -1, a random seed will be used.",
            default=None, ge=-1, le=4294967295,
        ),
    ) -> AsyncIterator[Path]:
        request = self.musicgen.request(
            prompt=prompt,
            input_audio=input_audio,
            duration=duration,
            continuation=continuation,
            continuation_start=continuation_start,
            continuation_end=continuation_end,
            normalization_strategy=normalization_strategy,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            classifier_free_guidance=classifier_free_guidance,
            output_format=output_format,
            seed=seed,
            surface="http",  # a mistake is said in an HTTP client's words
        )
        cancel = threading.Event()
        files = self.musicgen.files(request, self.stream_chunk_s, cancel)
        try:  # the work runs in a thread (this prediction's logs go with it), the event loop stays free
            while (path := await asyncio.to_thread(next, files, None)) is not None:
                yield Path(path)
        except asyncio.CancelledError:  # Cog's cancel: the request leaves the decode loop at once
            cancel.set()
            raise
