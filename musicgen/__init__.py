"""MusicGen served from transformers-format checkpoints: text-to-music, melody conditioning, continuation.

Library entry points::

    from musicgen import MusicGen, GenerationRequest
    model = MusicGen.load("weights/musicgen-melody")
    result = model.predict(GenerationRequest(prompt="lofi beat", duration=8))
    result.paths, result.seed, result.timings

Layers, each importing only the ones below it: ``service`` (request -> audio in -> engine -> normalization
-> output) over ``engine`` (conditioning, windows, codec, the decode loop) over ``backends`` / ``decoder``
(``kv_cache``, ``quant``); ``request`` / ``inputs`` describe what may be asked, ``settings`` / ``hub`` /
``loading`` where the weights come from.
"""

from .errors import MusicGenError, WeightsNotFoundError
from .request import GenerationRequest


def __getattr__(name):  # these pull in torch/transformers: import them only when asked for
    if name in ("MusicGen", "PredictionResult"):
        from . import service

        return getattr(service, name)
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(name)


__all__ = ["GenerationRequest", "MusicGen", "MusicGenError", "PredictionResult", "Settings", "WeightsNotFoundError"]
