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


def codec_config(preset: str = "tiny"):
    """The EnCodec config of a preset: the real 32 kHz, 50 Hz layout (narrower in "tiny")."""
    from transformers import EncodecConfig

    return EncodecConfig(
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
        use_conv_shortcut=False,  # as the published 32 kHz codec: residual blocks add their input unchanged
        compress=2,
        dilation_growth_rate=2,
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        num_residual_layers=1,
        trim_right_ratio=1.0,
        **_PRESETS[preset]["codec"],
    )


def build_random_model(*, melody: bool = False, stereo: bool = False, preset: str = "tiny", seed: int = 0):
    """A random-weight MusicGen (or MusicGen-Melody) model in memory, with its tokenizer.

    The EnCodec codebooks get random values: transformers initialises them to zeros, which would make
    every token decode to the same audio and every input encode to code 0.
    """
    from transformers import (
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
    codec = codec_config(preset)
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


# The public facebook/musicgen-* repositories as the Hub publishes them (DESIGN.md): which family, how the
# weights are stored, and which files hold them. ``files``: "single" (model.safetensors), "shards" (safetensors
# shards + index), "bin" (pytorch_model.bin only), "bin-shards" (two .bin shards + index); ``copies``: the
# duplicates published beside them (never needed); ``stale``: indexes naming files the repository lacks.
HUB_REPOS = {
    "facebook/musicgen-small": dict(melody=False, stereo=False, fp16=False, files="single", copies=("bin",)),
    "facebook/musicgen-medium": dict(melody=False, stereo=False, fp16=False, files="bin"),
    "facebook/musicgen-large": dict(melody=False, stereo=False, fp16=False, files="bin-shards"),
    "facebook/musicgen-melody": dict(melody=True, stereo=False, fp16=False, files="shards", shards=2),
    "facebook/musicgen-melody-large": dict(melody=True, stereo=False, fp16=False, files="shards", shards=3),
    "facebook/musicgen-stereo-small": dict(melody=False, stereo=True, fp16=True, files="single",
                                           copies=("fp32", "bin", "fp32-bin")),
    "facebook/musicgen-stereo-medium": dict(melody=False, stereo=True, fp16=True, files="single", stale=True),
    "facebook/musicgen-stereo-large": dict(melody=False, stereo=True, fp16=True, files="shards", shards=2,
                                           stale=True),
    "facebook/musicgen-stereo-melody": dict(melody=True, stereo=True, fp16=False, files="shards", shards=2),
    "facebook/musicgen-stereo-melody-large": dict(melody=True, stereo=True, fp16=False, files="shards", shards=3),
}


def hub_state_dict(model) -> dict[str, torch.Tensor]:
    """``model``'s tensors named as the public repos name them: EnCodec's weight norm as ``weight_g`` /
    ``weight_v`` (saved before transformers moved to parametrizations), the decoder's sinusoidal positions
    (``embed_positions.weights``, a non-persistent buffer today) included, T5's embedding as ``shared``."""
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace(".parametrizations.weight.original0", ".weight_g")
        name = name.replace(".parametrizations.weight.original1", ".weight_v")
        state[name] = tensor.detach().clone()
    state["decoder.model.decoder.embed_positions.weights"] = model.decoder.model.decoder.embed_positions.weights.clone()
    return state


def _shard(state: dict, parts: int, stem: str, ext: str) -> dict[str, dict]:
    """``state`` split into ``parts`` files named as transformers names shards: {file name: tensors}."""
    names = sorted(state)
    size = -(-len(names) // parts)
    return {f"{stem}-{i + 1:05d}-of-{parts:05d}.{ext}": {n: state[n] for n in names[i * size:(i + 1) * size]}
            for i in range(parts)}


def _index(files: dict[str, dict]) -> str:
    total = sum(t.numel() * t.element_size() for tensors in files.values() for t in tensors.values())
    return json.dumps({"metadata": {"total_size": total},
                       "weight_map": {n: f for f, tensors in files.items() for n in sorted(tensors)}}, indent=2)


def write_hub_layout(model, tokenizer, dst: str | Path, repo: str) -> Path:
    """Write ``model`` (a random model of ``repo``'s family, ``build_random_model``) to ``dst`` with the files,
    key names and storage dtype ``repo`` has on the Hub (``HUB_REPOS``), README and .gitattributes included."""
    from safetensors.torch import save_file

    spec = HUB_REPOS[repo]
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(dst)
    model.generation_config.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    full = hub_state_dict(model)  # the .bin pickles hold T5's tied embedding twice, sharing storage
    full["text_encoder.encoder.embed_tokens.weight"] = full["text_encoder.shared.weight"]
    fp32 = {k: v for k, v in full.items() if k != "text_encoder.encoder.embed_tokens.weight"}
    stored = {k: v.half() if spec["fp16"] and v.is_floating_point() else v for k, v in fp32.items()}

    def safetensors(tensors: dict, name: str) -> None:
        save_file(tensors, str(dst / name), metadata={"format": "pt"})

    def pickle(tensors: dict, name: str) -> None:
        torch.save(tensors, dst / name)

    kind = spec["files"]
    if kind == "single":
        safetensors(stored, "model.safetensors")
    elif kind == "shards":
        files = _shard(stored, spec["shards"], "model", "safetensors")
        for name, tensors in files.items():
            safetensors(tensors, name)
        (dst / "model.safetensors.index.json").write_text(_index(files))
    elif kind == "bin":
        pickle(full, "pytorch_model.bin")
    else:  # bin-shards
        files = _shard(full, 2, "pytorch_model", "bin")
        for name, tensors in files.items():
            pickle(tensors, name)
        (dst / "pytorch_model.bin.index.json").write_text(_index(files))
    half_full = {k: v.half() if spec["fp16"] and v.is_floating_point() else v for k, v in full.items()}
    for copy in spec.get("copies", ()):
        {"fp32": lambda: safetensors(fp32, "model.fp32.safetensors"),
         "bin": lambda: pickle(half_full, "pytorch_model.bin"),
         "fp32-bin": lambda: pickle(full, "pytorch_model.fp32.bin")}[copy]()
    if spec.get("stale"):  # indexes left behind by earlier uploads, naming files the repository no longer has
        absent = {"pytorch_model-00001-of-00002.bin": fp32}
        (dst / "pytorch_model.bin.index.json").write_text(_index(absent))
        (dst / "model.safetensors.index.fp32.json").write_text(_index({"model.fp32-00001-of-00002.safetensors": fp32}))
    (dst / "README.md").write_text(f"# {repo} (random weights, test layout)\n")
    (dst / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return dst
