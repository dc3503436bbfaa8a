"""Random-weight MusicGen checkpoints in transformers format, built offline.

Real checkpoints come from the Hugging Face Hub (see ``musicgen.hub``). Tests and benchmarks cannot
reach it, so they build checkpoints here with the *same file layout* (config.json, model.safetensors,
tokenizer files, generation_config.json) and load them through the very same code as real weights.

``tiny`` shapes keep the test suite fast; ``small`` and ``medium`` mirror facebook/musicgen-small and the
1.5B decoder of facebook/musicgen-medium / facebook/musicgen-melody for benchmarks (the text encoder keeps
T5-base's shapes with a small vocabulary).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SAMPLE_RATE = 32000
PAD_TOKEN = 2048

# Decoder / text-encoder shapes per preset. The codec is always the real 32 kHz, 50 Hz EnCodec layout
# (upsampling 8*5*4*4 = 640 samples a frame, 2.2 kbps => 4 codebooks of 2048), only narrower in "tiny".
_PRESETS = {
    "tiny": dict(
        text=dict(d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4),
        decoder=dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4),
        codec=dict(hidden_size=16, num_filters=4, num_lstm_layers=1, codebook_dim=16),
    ),
    "small": dict(
        text=dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12),
        decoder=dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16),
        codec=dict(hidden_size=128, num_filters=64, num_lstm_layers=2, codebook_dim=128),
    ),
    "medium": dict(
        text=dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12),
        decoder=dict(hidden_size=1536, ffn_dim=6144, num_hidden_layers=48, num_attention_heads=24),
        codec=dict(hidden_size=128, num_filters=64, num_lstm_layers=2, codebook_dim=128),
    ),
}


def _train_tokenizer(vocab_size: int):
    """A small T5 sentencepiece-style (Unigram) tokenizer trained offline on a fixed text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    corpus = [
        "lofi hip hop beat with mellow piano and soft drums",
        "epic orchestral soundtrack with strings brass and choir",
        "80s pop track with bassy drums and synth",
        "90s rock song with loud guitars and heavy drums",
        "ambient electronic music with warm pads",
        "jazz trio with upright bass brushed drums and piano",
        string.ascii_lowercase + string.digits + " .,!?'-",
    ] * 4
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    scores = json.loads(tok.to_str())["model"]["vocab"]  # [[piece, log-probability], ...]
    return T5Tokenizer(vocab=[(p, float(s)) for p, s in scores], extra_ids=0)


def build_random_checkpoint(
    dst: str | Path,
    *,
    melody: bool = False,
    stereo: bool = False,
    preset: str = "tiny",
    seed: int = 0,
) -> Path:
    """Write a random-weight MusicGen (or MusicGen-Melody) checkpoint to ``dst`` and return the path."""
    model, tokenizer = build_random_model(melody=melody, stereo=stereo, preset=preset, seed=seed)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def build_random_model(*, melody: bool = False, stereo: bool = False, preset: str = "tiny", seed: int = 0):
    """A random-weight MusicGen (or MusicGen-Melody) model in memory, with its tokenizer.

    The EnCodec codebooks get random values: transformers initialises them to zeros, which would make
    every token decode to the same audio and every input encode to code 0.
    """
    from transformers import (
        EncodecConfig,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    shapes = _PRESETS[preset]
    torch.manual_seed(seed)

    tokenizer = _train_tokenizer(96)
    vocab = len(tokenizer)
    text = T5Config(vocab_size=vocab, **shapes["text"], relative_attention_num_buckets=8 if preset == "tiny" else 32)
    codec = EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[2.2],
        codebook_size=2048,
        normalize=False,
        use_causal_conv=False,
        norm_type="weight_norm",
        pad_mode="reflect",
        chunk_length_s=None,
        overlap=None,
        **shapes["codec"],
    )
    channels = 2 if stereo else 1
    dec_kwargs = dict(
        vocab_size=2048,
        num_codebooks=4 * channels,
        audio_channels=channels,
        pad_token_id=PAD_TOKEN,
        bos_token_id=PAD_TOKEN,
        max_position_embeddings=2048,
        **shapes["decoder"],
    )
    if melody:
        config = MusicgenMelodyConfig(
            text_encoder=text, audio_encoder=codec, decoder=MusicgenMelodyDecoderConfig(**dec_kwargs),
            num_chroma=12, chroma_length=235,
        )
        model = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=MusicgenDecoderConfig(**dec_kwargs))
        model = MusicgenForConditionalGeneration(config)

    with torch.no_grad():
        # A freshly initialised EnCodec encoder barely depends on its input (outputs vary by ~1e-3 around a
        # constant), so every clip would encode to the same codes. Doubling each weight-normed conv's gain
        # gives unit-scale, input-dependent embeddings, so prompts and melodies really change the codes.
        for name, param in model.audio_encoder.encoder.named_parameters():
            if name.endswith("parametrizations.weight.original0"):
                param.mul_(2.0)
        for layer in model.audio_encoder.quantizer.layers:
            cb = layer.codebook
            cb.embed.copy_(torch.randn_like(cb.embed))
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            if hasattr(cb, "inited"):
                cb.inited.fill_(True)

        # Real codecs output zero-mean audio; a random one carries a large DC offset that loudness
        # normalization would turn into clipping. Remove it through the last conv's bias.
        codes = torch.randint(0, 2048, (1, 1, codec.num_quantizers, 100))
        dc = model.audio_encoder.decode(codes, audio_scales=[None]).audio_values.mean()
        model.audio_encoder.decoder.layers[-1].conv.bias.sub_(dc)

    model.generation_config = GenerationConfig(
        do_sample=True,
        guidance_scale=3.0,
        max_length=1500,
        pad_token_id=PAD_TOKEN,
        decoder_start_token_id=PAD_TOKEN,
        bos_token_id=PAD_TOKEN,
    )
    return model.eval(), tokenizer
