"""Audio in and out, no model: decoding user files (``audio_io``), audiocraft's normalizations (``normalize``)
and their loudness measurement (``loudness``), writing wav/mp3 (``output``). Imports nothing from
``musicgen.engine`` or ``musicgen.serving``."""
