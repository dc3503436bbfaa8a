"""MusicGen served from transformers-format checkpoints: text-to-music, melody conditioning, continuation.

Library entry points::

    from musicgen import MusicGen, GenerationRequest
    model = MusicGen.load("weights/musicgen-melody")
    paths = model.predict(GenerationRequest(prompt="lofi beat", duration=8))
"""

from .errors import MusicGenError, WeightsNotFoundError
from .request import GenerationRequest


def __getattr__(name):  # MusicGen pulls in torch/transformers: import it only when asked for
    if name == "MusicGen":
        from .service import MusicGen

        return MusicGen
    raise AttributeError(name)


__all__ = ["GenerationRequest", "MusicGen", "MusicGenError", "WeightsNotFoundError"]
