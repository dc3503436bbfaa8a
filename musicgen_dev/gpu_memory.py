"""The GPU memory table of docs/deployment.md, from the real checkpoints' shapes through ``musicgen.serving.memory.plan`` (the
function a server's setup calls), so docs and code agree:

    .venv/bin/python -m musicgen_dev.gpu_memory

Weights are counted from the models built on PyTorch's meta device (no memory, no download) with the
checkpoints' configurations (facebook/musicgen-small, -medium, -large, -melody: decoder, T5-base, 32 kHz
EnCodec, and HTDemucs for melody's stems), as a GPU holds them: the decoder in bf16/fp16, the rest float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from musicgen.serving import memory

GIB = 2**30
CONTEXT_BYTES = int(0.5 * memory.GB)  # the CUDA context and PyTorch's kernels, before anything is loaded

# total memory as PyTorch reports it (torch.cuda.mem_get_info / OOM messages) for each class of card
CARDS = {"T4 16 GB": 14.75 * GIB, "L4 / A10G 24 GB": 22.0 * GIB, "A100 / H100 80 GB": 79.1 * GIB}

T5_BASE = dict(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12)
ENCODEC_32KHZ = dict(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                     codebook_size=2048, normalize=False, use_causal_conv=False, norm_type="weight_norm",
                     pad_mode="reflect", chunk_length_s=None, overlap=None, hidden_size=128, num_filters=64,
                     num_lstm_layers=2, codebook_dim=128)
CHECKPOINTS = {
    "facebook/musicgen-small": dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16),
    "facebook/musicgen-medium": dict(hidden_size=1536, ffn_dim=6144, num_hidden_layers=48, num_attention_heads=24),
    "facebook/musicgen-large": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=48, num_attention_heads=32),
    "facebook/musicgen-melody": dict(hidden_size=1536, ffn_dim=6144, num_hidden_layers=48, num_attention_heads=24),
}
HTDEMUCS = dict(channels=48, depth=4, t_layers=5, bottom_channels=512)  # the htdemucs bag's one model


def config(name: str):
    """The transformers configuration of a real checkpoint."""
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenMelodyConfig,
                              MusicgenMelodyDecoderConfig, T5Config)

    decoder = dict(vocab_size=2048, num_codebooks=4, audio_channels=1, pad_token_id=2048, bos_token_id=2048,
                   max_position_embeddings=2048, **CHECKPOINTS[name])
    text, codec = T5Config(**T5_BASE), EncodecConfig(**ENCODEC_32KHZ)
    if name.endswith("melody"):
        return MusicgenMelodyConfig(text_encoder=text, audio_encoder=codec,
                                    decoder=MusicgenMelodyDecoderConfig(**decoder), num_chroma=12, chroma_length=235)
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=MusicgenDecoderConfig(**decoder))


def parameters(name: str) -> dict[str, int]:
    """Parameters of the decoder and of the rest (text encoder, codec, projections), counted on meta."""
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    cfg = config(name)
    kind = MusicgenMelodyForConditionalGeneration if name.endswith("melody") else MusicgenForConditionalGeneration
    with torch.device("meta"):
        model = kind(cfg)
    decoder = sum(p.numel() for p in model.decoder.parameters())
    return {"decoder": decoder, "rest": sum(p.numel() for p in model.parameters()) - decoder}


def htdemucs_parameters() -> int:
    from demucs.htdemucs import HTDemucs

    with torch.device("meta"):
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100,
                         segment=Fraction(39, 5), **HTDEMUCS)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Row:
    checkpoint: str
    weights: int
    per_slot: int
    per_request_work: int
    prefill: int
    slots: dict[str, int | str]


def rows(decoder_bytes: int = 2) -> list[Row]:
    """One row per checkpoint: its sizes and the slots each card holds (uncapped)."""
    demucs = htdemucs_parameters()
    out = []
    for name in CHECKPOINTS:
        cfg = config(name)
        shapes = memory.ModelShapes.of(cfg)
        counts = parameters(name)
        weights = counts["decoder"] * decoder_bytes + 4 * (counts["rest"] + (demucs if shapes.melody else 0))
        sizes = dict(per_slot=memory.slot_bytes(shapes, decoder_bytes),
                     prefill=memory.prefill_bytes(shapes, decoder_bytes),
                     per_request_work=memory.request_bytes(shapes, stems=True))
        slots: dict[str, int | str] = {}
        for card, total in CARDS.items():
            try:
                slots[card] = memory.plan(weights=weights, free=int(total) - CONTEXT_BYTES, total=int(total),
                                          cap=10**6, checkpoint=name, card=card, **sizes).slots
            except Exception:
                slots[card] = "does not fit"
        out.append(Row(name, weights, slots=slots, **sizes))
    return out


def table() -> str:
    """The table of docs/deployment.md (markdown)."""
    gb = memory.GB
    lines = ["| checkpoint | weights | KV cache per slot | request-side work (each) | prefill | "
             + " | ".join(CARDS) + " |", "|---" * (5 + len(CARDS)) + "|"]
    for r in rows():
        lines.append(f"| {r.checkpoint.split('/')[-1]} | {r.weights / gb:.2f} GB | {r.per_slot / gb:.2f} GB | "
                     f"{r.per_request_work / gb:.2f} GB | {r.prefill / gb:.2f} GB | "
                     + " | ".join(str(r.slots[c]) for c in CARDS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
