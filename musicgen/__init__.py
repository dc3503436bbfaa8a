"""MusicGen served from transformers-format checkpoints: text-to-music, melody conditioning, continuation.

Library entry points::

    from musicgen import MusicGen, GenerationRequest
    model = MusicGen.load("weights/musicgen-melody")
    result = model.predict(GenerationRequest(prompt="lofi beat", duration=8), output_dir="outputs")
    result.paths, result.seed, result.timings

Packages, each importing only the ones below it (docs/architecture.md): ``musicgen.serving`` (the library's
``MusicGen``, continuous batching, batch jobs, metrics) over ``musicgen.engine`` (weights, conditioning, codec,
the decoder and its step) over ``musicgen.audio`` (decode, normalize, write). On top: ``inputs`` / ``request``
describe what may be asked, ``settings`` / ``hub`` / ``manifest`` where the weights come from, ``cli`` the
command; ``errors`` is imported by all.
"""

from musicgen.errors import MusicGenError, WeightsNotFoundError
from musicgen.request import GenerationRequest


def __getattr__(name):  # these pull in torch/transformers: import them only when asked for
    if name in ("MusicGen", "PredictionResult"):
        from musicgen.serving import service

        return getattr(service, name)
    if name == "Settings":
        from musicgen.settings import Settings

        return Settings
    raise AttributeError(name)


__all__ = ["GenerationRequest", "MusicGen", "MusicGenError", "PredictionResult", "Settings", "WeightsNotFoundError"]
