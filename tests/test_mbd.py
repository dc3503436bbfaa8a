"""MultiBand Diffusion (musicgen/engine/mbd.py) against audiocraft 1.3's own code: every part and a whole decode
compared with the outputs ``musicgen_dev/mbd_reference.py`` recorded from audiocraft on tiny random weights in
its checkpoint format (tests/data/mbd/). Nothing here imports or downloads audiocraft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicgen.engine.mbd import (DEFAULT_STEPS, BandSplit, MultiBandDiffusion, codec_latent)

DATA = Path(__file__).parent / "data" / "mbd"
TOL = 1e-4
SEED = 1234


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "reference.safetensors"))


@pytest.fixture(scope="module")
def mbd() -> MultiBandDiffusion:
    return MultiBandDiffusion.load(DATA)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    assert err <= TOL, err
    return err


def test_default_steps_are_audiocrafts():
    assert DEFAULT_STEPS == [999 - 50 * i for i in range(20)] + [0]  # 20 U-Net passes per band


@pytest.mark.parametrize("band", range(4))
def test_unet_forward(mbd, ref, band):
    with torch.inference_mode():
        out = mbd.bands[band].unet(ref["unet.x"], 517, ref["unet.condition"])
    close(out, ref[f"unet.{band}.out"])


@pytest.mark.parametrize("n_bands", [8, 32])
def test_band_split(ref, n_bands):
    bands = BandSplit(32000, n_bands)(ref["split.x"])
    close(bands, ref[f"split.{n_bands}"])
    close(bands.sum(0), ref["split.x"])


def test_band_split_filters_are_julius(mbd):
    """The processors' filters in audiocraft's state are julius' own; ours are computed, and equal."""
    tensors = load_file(str(DATA / "mbd.safetensors"))
    assert torch.equal(mbd.bands[0].processor.split.filters, tensors["0.processor.split_bands.lowpass.filters"])


@pytest.mark.parametrize("band", [0, 2])
def test_sample_processor(mbd, ref, band):
    processor = mbd.bands[band].processor
    close(processor.project(ref["processor.x"]), ref[f"processor.{band}.project"])
    close(processor.restore(ref["processor.x"]), ref[f"processor.{band}.return"])
    assert not mbd.bands[1].processor.used  # band 1 was trained without one: identity both ways
    assert torch.equal(mbd.bands[1].processor.restore(ref["processor.x"]), ref["processor.x"])


def test_one_chain_step_and_a_short_chain(mbd, ref):
    band = mbd.bands[0]
    coefficients = band.schedule.coefficients([999, 949, 0])
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(ref["chain.initial"].shape, generator=generator)
    step, alpha, alpha_bar, sigma = coefficients[0]
    with torch.inference_mode():
        estimate = band.unet(ref["chain.initial"], step, ref["chain.condition"])
        first = band.schedule.step(ref["chain.initial"], estimate, alpha, alpha_bar, sigma, noise)
        close(first, ref["chain.step1"])
        generator = torch.Generator().manual_seed(SEED)
        chain = band.schedule.run(band.unet, ref["chain.initial"], ref["chain.condition"], generator, [999, 949, 0])
    close(chain, ref["chain.step2"])
    close(band.processor.restore(chain), ref["chain.out"])


def test_re_eq(mbd, ref):
    close(mbd.re_eq(ref["re_eq.wav"], ref["re_eq.ref"]), ref["re_eq.out"])


def test_whole_decode(mbd, ref):
    """Same seed, same audio: the four bands' 20-pass chains summed, then re-EQ against the EnCodec decode."""
    bands_sum = mbd.generate(ref["decode.emb"], ref["decode.encodec"].shape[-1], torch.Generator().manual_seed(SEED))
    close(bands_sum, ref["decode.bands_sum"])
    out = mbd.decode(ref["decode.emb"], ref["decode.encodec"], torch.Generator().manual_seed(SEED))
    close(out, ref["decode.out"])
    other = mbd.decode(ref["decode.emb"], ref["decode.encodec"], torch.Generator().manual_seed(SEED + 1))
    assert (other - out).abs().max() > 1e-2  # the noise comes from the generator passed in


def test_codec_latent_is_audiocrafts_decode_latent(ref):
    """The latent from the codes through transformers' EnCodec quantizer equals audiocraft's ``decode_latent``."""
    from transformers import EncodecConfig
    from transformers.models.encodec.modeling_encodec import EncodecResidualVectorQuantizer

    books = ref["latent.codebooks"]
    config = EncodecConfig(codebook_size=books.shape[1], codebook_dim=books.shape[2], hidden_size=books.shape[2],
                           target_bandwidths=[1.5], sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4])
    quantizer = EncodecResidualVectorQuantizer(config)
    for layer, book in zip(quantizer.layers, books):
        layer.codebook.embed.copy_(book)
    close(codec_latent(quantizer, ref["latent.codes"]), ref["latent.out"])
