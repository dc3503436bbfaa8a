"""How many requests a card holds: the memory plan of a serving process, computed from the checkpoint's shapes.

A GPU process holds the weights (measured once loaded), one KV cache slot per request decoded at once, and
room for the work around the decode loop: the prefill of a window (one at a time, in the decode loop) and the
request-side work (text encoder, EnCodec chunks, Demucs segments, MultiBand Diffusion's decode), of which at
most ``request_workers`` run at once (``musicgen.serving.gpu_work``). ``plan`` turns those sizes and the card's free memory into slots; it is pure,
so the table of docs/deployment.md (``python -m musicgen_dev.gpu_memory``) and a server's setup compute the same numbers.

Request-side peaks were measured with the real layouts (``bench/request_memory.py``, CPU peak resident
memory; see docs/deployment.md) and are rounded up here, because the GPU's caching allocator and cuDNN's workspaces add
to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from musicgen.errors import MusicGenError
from musicgen.engine.graphs import LENGTH_BUCKET as CACHE_BUCKET, ROWS_PER_SLOT

GB = 1e9
# peak working memory of one piece of request-side work, float32 (bench/request_memory.py, rounded up)
ENCODEC_BYTES_PER_SAMPLE = 1500  # per output sample of a chunk (decode) or input sample (encode), 64 filters
# one HTDemucs segment (7.8 s, stereo, 44.1 kHz: 0.64 GB measured) and apply_model's output for the whole
# melody, which it keeps on the device (four stereo stems: 0.4 GB for 300 s)
DEMUCS_SEGMENT_BYTES = int(1.5 * GB)
T5_BYTES = int(0.1 * GB)  # T5-base over 512 tokens
CODEC_CONTEXT_FRAMES = 50  # musicgen.engine.codec's overlap on each side of a chunk
RESERVE_FRACTION = 0.05  # of the card: the caching allocator's fragmentation, cuBLAS/cuDNN workspaces
REQUEST_WORKERS = 2  # request-side work at once, when the card has room for two


@dataclass(frozen=True)
class ModelShapes:
    """What the memory of a checkpoint depends on (a transformers MusicGen / MusicGen-Melody config)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    window_columns: int  # token columns of a full window: frames + delays + start column
    prefix: int  # positions before the tokens: melody checkpoints' chroma + text (worst case), else 0
    text_tokens: int  # the longest text the encoder reads (cross-attended by plain checkpoints)
    cross_attention: bool
    chunk_samples: int  # audio samples of one EnCodec chunk with its context
    melody: bool

    @classmethod
    def of(cls, config, window_frames: int = 1500) -> ModelShapes:
        """The shapes of a MusicgenConfig / MusicgenMelodyConfig, decoding ``window_frames`` frames a window."""
        dec, text, codec = config.decoder, config.text_encoder, config.audio_encoder
        melody = config.model_type == "musicgen_melody"
        channels = int(getattr(dec, "audio_channels", 1))
        text_tokens = int(getattr(text, "n_positions", None) or 512)
        hop = int(codec.sampling_rate // round(codec.frame_rate))
        return cls(
            layers=int(dec.num_hidden_layers), hidden=int(dec.hidden_size), heads=int(dec.num_attention_heads),
            ffn=int(dec.ffn_dim), window_columns=window_frames + int(dec.num_codebooks) // channels,
            prefix=int(config.chroma_length) + text_tokens if melody else 0, text_tokens=text_tokens,
            cross_attention=not melody, chunk_samples=(window_frames + 2 * CODEC_CONTEXT_FRAMES) * hop,
            melody=melody,
        )

    @property
    def cache_positions(self) -> int:
        """Positions of a slot's KV cache: the longest prefix and a full window, in whole buckets."""
        return -(-(self.prefix + self.window_columns) // CACHE_BUCKET) * CACHE_BUCKET


def slot_bytes(shapes: ModelShapes, state_bytes: int) -> int:
    """One request's decode state: its two rows (conditional, unconditional) of self-attention keys and values
    at every layer over the whole cache, and (plain checkpoints) its text's cross-attention keys/values."""
    per_position = shapes.layers * 2 * ROWS_PER_SLOT * shapes.hidden * state_bytes
    text = shapes.text_tokens if shapes.cross_attention else 0
    return per_position * (shapes.cache_positions + text)


def prefill_bytes(shapes: ModelShapes, state_bytes: int) -> int:
    """The decode loop's own working memory: one window's prefill (two rows over the prefix and the window:
    a layer's activations and its attention mask over the cache; attention itself runs in a fused kernel)."""
    length = shapes.prefix + shapes.window_columns
    activations = 2 * ROWS_PER_SLOT * length * (3 * shapes.hidden + shapes.ffn) * state_bytes
    return activations + length * shapes.cache_positions * state_bytes


def request_bytes(shapes: ModelShapes, stems: bool, mbd_bytes: int = 0) -> int:
    """The peak of one piece of request-side work: an EnCodec chunk, the text encoder, (melody checkpoints
    with stem separation) a Demucs segment or (``mbd_bytes``, when the deployment decodes with MultiBand
    Diffusion) the MBD decode of the longest clip a request may ask for, bounded by its chunk length
    (``MultiBandDiffusion.working_bytes``)."""
    peaks = [ENCODEC_BYTES_PER_SAMPLE * shapes.chunk_samples, T5_BYTES, mbd_bytes]
    if shapes.melody and stems:
        peaks.append(DEMUCS_SEGMENT_BYTES)
    return max(peaks)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of each part, and the slots and request-side workers they leave room for."""

    slots: int
    request_workers: int
    free: int  # the card's memory this process can use, its weights included
    weights: int
    per_slot: int
    prefill: int
    per_request_work: int
    reserve: int

    @property
    def kv_cache(self) -> int:
        return self.slots * self.per_slot

    @property
    def headroom(self) -> int:
        """Everything but the weights and the slots."""
        return self.prefill + self.request_workers * self.per_request_work + self.reserve

    def describe(self) -> str:
        return (f"{self.slots} slot(s) of {self.per_slot / GB:.2f} GB ({self.kv_cache / GB:.1f} GB of KV cache), "
                f"weights {self.weights / GB:.1f} GB, {self.request_workers} request-side worker(s) of "
                f"{self.per_request_work / GB:.2f} GB, prefill {self.prefill / GB:.2f} GB, reserve "
                f"{self.reserve / GB:.1f} GB, of {self.free / GB:.1f} GB free")


def plan(*, per_slot: int, weights: int, free: int, total: int, prefill: int, per_request_work: int,
         cap: int, checkpoint: str, card: str) -> MemoryPlan:
    """Slots for ``free`` bytes (the card's memory this process can use, weights included; ``total``: its size) holding
    ``weights``, the decode loop's ``prefill`` and up to ``REQUEST_WORKERS`` request-side works of
    ``per_request_work`` (one when two leave no slot), at most ``cap`` slots. Raises ``MusicGenError`` with
    one sentence when not even one slot fits."""
    reserve = int(RESERVE_FRACTION * total)
    for workers in range(REQUEST_WORKERS, 0, -1):
        spare = free - weights - prefill - reserve - workers * per_request_work
        slots = min(cap, spare // per_slot) if spare > 0 else 0
        if slots >= 1:
            return MemoryPlan(int(slots), workers, free, weights, per_slot, prefill, per_request_work, reserve)
    needed = weights + per_slot + prefill + reserve + per_request_work
    raise does_not_fit(checkpoint, card, free, total,
                       f"its weights take {weights / GB:.1f} GB and serving one request needs "
                       f"{(needed - weights) / GB:.1f} GB more ({needed / GB:.1f} GB in all)")


def does_not_fit(checkpoint: str, card: str, free: int, total: int, why: str) -> MusicGenError:
    """The one sentence setup fails with when a checkpoint does not fit on the card."""
    return MusicGenError(
        f"{checkpoint} does not fit on this GPU ({card}: {free / GB:.1f} GB free of {total / GB:.1f} GB): {why}; "
        "use a card with more memory, free the card of other processes, or set MUSICGEN_MODEL to a smaller "
        "checkpoint (docs/deployment.md, \"GPU memory\")."
    )
