"""Every checkpoint layout (plain/melody x mono/stereo) through the engine and the predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cog import Path

from conftest import SR, _setup_predictor, read, run, tone
from musicgen.engine import Engine
from musicgen.sampling import SamplingParams
from musicgen.weights import load
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
        ours = engine.generate(TEXT, 40, SamplingParams(temperature=0.0, cfg_scale=3.0), prompt=p, melody=melody)
        assert torch.equal(ours, reference_codes(model, tokenizer, 40, 3.0, prompt=p, melody=melody))


@pytest.mark.parametrize("kind", KINDS)
def test_every_layout_generates_with_its_channel_count(predictors, audio_files, kind):
    predictor = predictors[kind]
    channels = 2 if "stereo" in kind else 1
    text, _ = read(run(predictor, prompt="strings", duration=1, seed=1))
    assert text.shape == (channels, SR)
    cont, _ = read(run(predictor, input_audio=Path(audio_files["stereo44k"]), continuation=True,
                       continuation_end=2, duration=1, seed=1))
    assert cont.shape == (channels, 3 * SR)
    if "melody" in kind:
        mel, _ = read(run(predictor, input_audio=Path(audio_files["wav"]), duration=1, seed=1))
        assert mel.shape == (channels, SR)
    else:
        with pytest.raises(Exception, match=f"The loaded model {kind} cannot follow a melody"):
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
