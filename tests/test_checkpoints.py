"""Every checkpoint layout (plain/melody x mono/stereo) through the engine and the predictor."""

from __future__ import annotations

import pytest
import torch
from cog import Path

from conftest import SR, _setup_predictor, read, run, tone
from musicgen import MusicGenError
from musicgen.engine.engine import Engine
from musicgen.engine.sampling import SamplingParams
from musicgen.engine.loading import load
from test_engine import TEXT, reference_codes

KINDS = ["plain", "melody", "plain-stereo", "melody-stereo"]


@pytest.fixture(scope="module")
def predictors(checkpoints):
    return {kind: _setup_predictor(checkpoints[kind]) for kind in KINDS}


@pytest.mark.parametrize("kind", ["plain-stereo", "melody-stereo"])
def test_stereo_greedy_tokens_equal_transformers_generate(checkpoints, kind):
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="fp32")
    assert (engine.channels, engine.num_codebooks, engine.max_delay) == (2, 8, 3)
    melody = torch.from_numpy(tone([440.0, 330.0], 3.0)) if "melody" in kind else None
    prompt = torch.randint(0, 2048, (8, 20), generator=torch.Generator().manual_seed(0))
    for p in (None, prompt):
        ours = engine.generate_codes(TEXT, 40, SamplingParams(temperature=0.0, cfg_scale=3.0), prompt_codes=p, melody_wav=melody)
        assert torch.equal(ours, reference_codes(model, tokenizer, 40, 3.0, prompt=p, melody=melody))


@pytest.mark.parametrize("kind", KINDS)
def test_every_layout_generates_with_its_channel_count(predictors, audio_files, kind):
    predictor = predictors[kind]
    channels = 2 if "stereo" in kind else 1
    text, _ = read(run(predictor, prompt="strings", duration=1, seed=1))
    assert text.shape == (channels, SR)
    cont, _ = read(run(predictor, input_audio=Path(audio_files["stereo44k"]), continuation=True,
                       continuation_end=2, duration=3, seed=1))
    assert cont.shape == (channels, 3 * SR)
    if "melody" in kind:
        mel, _ = read(run(predictor, input_audio=Path(audio_files["wav"]), duration=1, seed=1))
        assert mel.shape == (channels, SR)
    else:
        with pytest.raises(MusicGenError, match=f"The loaded model {kind} cannot follow a melody"):
            run(predictor, input_audio=Path(audio_files["wav"]), duration=1)


def test_stereo_continuation_encodes_each_channel(checkpoints):
    model, tokenizer = load(checkpoints["plain-stereo"], torch.device("cpu"))
    engine = Engine(model, tokenizer)
    left = torch.from_numpy(tone([440.0], 1.0))
    right = torch.from_numpy(tone([220.0], 1.0))
    codes = engine.encode(torch.stack([left, right]))
    assert codes.shape == (8, 50)
    assert torch.equal(codes[0::2], engine.encode(torch.stack([left, left]))[0::2])  # left codebooks
    assert torch.equal(codes[1::2], engine.encode(torch.stack([right, right]))[1::2])  # right codebooks
    assert not torch.equal(codes[0::2], codes[1::2])
    wav = engine.decode(codes)
    assert wav.shape == (2, SR) and not torch.allclose(wav[0], wav[1])


# ---------------------------------------------------------------- loading: mapped from safetensors
def _reference_load(path):
    from transformers import AutoConfig, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    kind = AutoConfig.from_pretrained(str(path)).model_type
    cls = MusicgenMelodyForConditionalGeneration if kind == "musicgen_melody" else MusicgenForConditionalGeneration
    return cls.from_pretrained(str(path), dtype=torch.float32).eval()


def _assert_same_model(ours, ref):
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(ours_sd) == set(ref_sd)
    assert all(torch.equal(ours_sd[k], ref_sd[k]) for k in ref_sd)
    ref_buffers = dict(ref.named_buffers())  # non-persistent ones included (conv geometry, positions)
    assert {n: b.shape for n, b in ours.named_buffers()} == {n: b.shape for n, b in ref_buffers.items()}
    assert all(torch.equal(b, ref_buffers[n]) for n, b in ours.named_buffers())
    assert ours.text_encoder.encoder.embed_tokens.weight is ours.text_encoder.shared.weight  # tied
    assert ours.generation_config.to_dict() == ref.generation_config.to_dict()
    assert not any(p.requires_grad for p in ours.parameters())


def _copy_checkpoint(src, dst, rename=None, extra=None):
    """A copy of checkpoint ``src`` whose tensor names go through ``rename`` (plus ``extra`` tensors)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(src / "model.safetensors"))
    state = {(rename(k) if rename else k): v for k, v in state.items()}
    save_file({**state, **(extra or {})}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("kind", KINDS)
def test_mapped_load_equals_transformers_from_pretrained(checkpoints, kind, caplog):
    caplog.set_level("INFO", logger="musicgen.engine.loading")
    model, _ = load(checkpoints[kind], torch.device("cpu"))
    assert "mapped " in caplog.text and "with transformers" not in caplog.text  # the mapped path took it
    _assert_same_model(model, _reference_load(checkpoints[kind]))


def test_hub_style_weight_norm_names_are_mapped(checkpoints, tmp_path, caplog):
    # the public repos were saved before EnCodec moved to parametrized weight norm: weight_g / weight_v
    legacy = _copy_checkpoint(checkpoints["melody"], tmp_path / "legacy", rename=lambda k: k.replace(
        ".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v"))
    from safetensors import safe_open

    with safe_open(str(legacy / "model.safetensors"), "pt") as f:
        assert any(k.endswith(".weight_g") for k in f.keys())
    caplog.set_level("INFO", logger="musicgen.engine.loading")
    model, _ = load(legacy, torch.device("cpu"))
    assert "mapped " in caplog.text and "with transformers" not in caplog.text
    _assert_same_model(model, _reference_load(checkpoints["melody"]))


def test_sharded_checkpoint_is_mapped(checkpoints, tmp_path, caplog):
    import shutil

    ref = _reference_load(checkpoints["plain"])
    sharded = tmp_path / "sharded"
    ref.save_pretrained(str(sharded), max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoints["plain"] / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    caplog.set_level("INFO", logger="musicgen.engine.loading")
    model, _ = load(sharded, torch.device("cpu"))
    assert "mapped " in caplog.text and "with transformers" not in caplog.text
    _assert_same_model(model, ref)


def test_unmatched_checkpoint_falls_back_to_transformers(checkpoints, tmp_path, caplog):
    odd = _copy_checkpoint(checkpoints["plain"], tmp_path / "odd", extra={"some.unknown.tensor": torch.zeros(3)})
    caplog.set_level("INFO", logger="musicgen.engine.loading")
    model, _ = load(odd, torch.device("cpu"))
    assert "loading odd with transformers" in caplog.text and "some.unknown.tensor" in caplog.text
    assert "mapped " not in caplog.text
    _assert_same_model(model, _reference_load(checkpoints["plain"]))
