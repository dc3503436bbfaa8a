"""One model, waveforms in and waveforms out: loading the weights (``layout``, ``loading``), the device
(``device``), text and melody conditioning (``conditioning``, ``chroma``, ``stems``), the codec (``codec``), the
decoder and its step (``decoder``, ``kv_cache``, ``quant``, ``graphs``, ``backends``), sampling
(``sampling``), one request's decode state (``sequence``) and the windows past 30 s (``engine``). Imports
``musicgen.audio`` below it, never ``musicgen.serving``."""
