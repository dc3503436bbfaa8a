"""The audiocraft -> transformers converter, on tiny audiocraft-shaped state dicts built here."""

from __future__ import annotations

import shutil

import pytest
import torch

from musicgen import MusicGenError
from musicgen.convert import main as convert_main
from musicgen.engine.engine import Engine
from musicgen.engine.sampling import SamplingParams
from musicgen.engine.loading import load
from test_engine import TEXT


def to_audiocraft(model) -> dict[str, torch.Tensor]:
    """A transformers MusicGen's language model in audiocraft's key layout (fused q/k/v, its names)."""
    sd, out = model.state_dict(), {}
    dec = "decoder.model.decoder."
    layers = model.config.decoder.num_hidden_layers
    for k in range(model.config.decoder.num_codebooks):
        out[f"emb.{k}.weight"] = sd[f"{dec}embed_tokens.{k}.weight"]
        out[f"linears.{k}.weight"] = sd[f"decoder.lm_heads.{k}.weight"]
    names = {"fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1",
             "encoder_attn_layer_norm": "norm_cross", "final_layer_norm": "norm2"}
    for i in range(layers):
        src, dst = f"{dec}layers.{i}.", f"transformer.layers.{i}."
        for ours, theirs in (("self_attn", "self_attn"), ("encoder_attn", "cross_attention")):
            if f"{src}{ours}.q_proj.weight" in sd:
                out[f"{dst}{theirs}.in_proj_weight"] = torch.cat(
                    [sd[f"{src}{ours}.{p}_proj.weight"] for p in ("q", "k", "v")], dim=0)
                out[f"{dst}{theirs}.out_proj.weight"] = sd[f"{src}{ours}.out_proj.weight"]
        for ours, theirs in names.items():
            for suffix in ("weight", "bias"):
                if f"{src}{ours}.{suffix}" in sd:
                    out[f"{dst}{theirs}.{suffix}"] = sd[f"{src}{ours}.{suffix}"]
    out["out_norm.weight"], out["out_norm.bias"] = sd[f"{dec}layer_norm.weight"], sd[f"{dec}layer_norm.bias"]
    for ours, theirs in (("enc_to_dec_proj", "description"), ("audio_enc_to_dec_proj", "self_wav")):
        for suffix in ("weight", "bias"):
            if f"{ours}.{suffix}" in sd:
                out[f"condition_provider.conditioners.{theirs}.output_proj.{suffix}"] = sd[f"{ours}.{suffix}"]
    out["condition_provider.conditioners.self_wav.chroma.window"] = torch.ones(8)  # ignored buffers
    return {k: v.clone() for k, v in out.items()}


@pytest.mark.parametrize("kind", ["plain", "melody", "plain-stereo"])
def test_converted_checkpoint_gives_identical_greedy_tokens(checkpoints, tmp_path, kind):
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    src = tmp_path / "audiocraft"
    src.mkdir()
    torch.save({"best_state": to_audiocraft(model), "xp.cfg": "lm_model: transformer_lm\n"}, src / "state_dict.bin")
    torch.save({"best_state": {}}, src / "compression_state_dict.bin")
    # the base shares text encoder and codec, but its language model is re-randomised: only the converted
    # weights can reproduce the original tokens
    base_model, _ = load(checkpoints[kind], torch.device("cpu"))
    with torch.no_grad():
        for name, param in base_model.named_parameters():
            if name.startswith("decoder.") or "enc_to_dec_proj" in name:
                param.normal_(0, 0.05)
    base = tmp_path / "base"
    shutil.copytree(checkpoints[kind], base)
    base_model.save_pretrained(base)
    assert convert_main([str(src), str(tmp_path / "out"), "--base", str(base)]) == 0

    converted, conv_tok = load(tmp_path / "out", torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0, cfg_scale=3.0)
    expected = Engine(model, tokenizer, precision="fp32").generate_codes(TEXT, 40, greedy)
    assert torch.equal(Engine(converted, conv_tok, precision="fp32").generate_codes(TEXT, 40, greedy), expected)
    assert not torch.equal(Engine(base_model, tokenizer, precision="fp32").generate_codes(TEXT, 40, greedy), expected)


def test_converter_refuses_what_it_does_not_know(checkpoints, tmp_path, capsys):
    model, _ = load(checkpoints["plain"], torch.device("cpu"))
    state = to_audiocraft(model)
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"best_state": {**state, "transformer.layers.0.mystery.weight": torch.zeros(2)}}, src / "state_dict.bin")
    assert convert_main([str(src), str(tmp_path / "o1"), "--base", str(checkpoints["plain"])]) == 2
    assert "Unexpected keys in the audiocraft checkpoint: transformer.layers.0.mystery.weight" in capsys.readouterr().err

    torch.save({"best_state": state}, src / "state_dict.bin")  # a plain LM onto a melody base
    assert convert_main([str(src), str(tmp_path / "o2"), "--base", str(checkpoints["melody"])]) == 2
    assert "is --base the same family" in capsys.readouterr().err

    torch.save({"best_state": {"foo": torch.zeros(1)}}, src / "state_dict.bin")
    assert convert_main([str(src), str(tmp_path / "o3"), "--base", str(checkpoints["plain"])]) == 2
    assert "does not hold an audiocraft MusicGen language model" in capsys.readouterr().err

    with pytest.raises(MusicGenError, match="No audiocraft state_dict.bin"):
        from musicgen.convert import convert

        convert(tmp_path / "nowhere", tmp_path / "o4", checkpoints["plain"])


def test_converter_never_writes_over_a_directory_that_holds_files(checkpoints, tmp_path, capsys):
    import shutil

    model, _ = load(checkpoints["plain"], torch.device("cpu"))
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"best_state": to_audiocraft(model)}, src / "state_dict.bin")
    dst = shutil.copytree(checkpoints["melody"], tmp_path / "my-melody")  # someone's checkpoint
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    assert convert_main([str(src), str(dst), "--base", str(checkpoints["plain"])]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: DST {dst} already holds a musicgen_melody checkpoint without musicgen-manifest.json (not downloaded "
        "by this project): give a new or empty output directory, or pass --replace to write the converted checkpoint "
        "over its files.")
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert convert_main([str(src), str(dst), "--base", str(checkpoints["plain"]), "--replace"]) == 0  # asked for
    assert load(dst, torch.device("cpu"))[0].config.model_type == "musicgen"
