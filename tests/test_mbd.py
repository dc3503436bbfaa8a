"""MultiBand Diffusion (musicgen/engine/mbd.py) against audiocraft 1.3's own code: every part and a whole decode
compared with the outputs ``musicgen_dev/mbd_reference.py`` recorded from audiocraft on tiny random weights in
its checkpoint format (tests/data/mbd/). Nothing here imports or downloads audiocraft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicgen.engine.mbd import (CHUNK_SECONDS, DEFAULT_STEPS, BandSplit, MultiBandDiffusion, codec_latent)

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
    # the noise comes from the generator passed in (a two-pass chain shows it as well as the whole one)
    short = [mbd.decode(ref["decode.emb"], ref["decode.encodec"], torch.Generator().manual_seed(seed), [999, 0])
             for seed in (SEED, SEED, SEED + 1)]
    assert torch.equal(short[0], short[1]) and (short[2] - short[0]).abs().max() > 1e-2


# --- long clips: chunks of bounded size, cross-faded ------------------------------------------------------------

def test_clips_up_to_a_window_are_one_chunk_and_longer_ones_even_chunks(mbd):
    """The default plan: a clip of up to 30 s (MusicGen's window) is decoded whole, as audiocraft decodes it; a
    longer one in chunks of even length, each seen with at most 1 s of context on each side."""
    hop = mbd.hop
    assert CHUNK_SECONDS == 30 and mbd.spans(1500 * hop) == [(0, 1500 * hop, 0, 1500 * hop)]
    for frames in (1501, 4000, 15000):  # just over a window, 80 s, the longest request (300 s)
        spans = mbd.spans(frames * hop)
        assert spans[0][0] == 0 and spans[-1][1] == frames * hop
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # the chunks tile the clip
        assert all(hi - lo <= (1500 + 2 * 50) * hop for _, _, lo, hi in spans)
        sizes = {stop - start for start, stop, _, _ in spans[:-1]}
        assert len(sizes) == 1 and spans[-1][1] - spans[-1][0] <= sizes.pop()
    assert len(mbd.spans(15000 * hop)) == 10


def test_a_long_clip_is_decoded_in_bounded_chunks_close_to_the_whole_decode(mbd):
    """Four chunks of 10 frames (2 frames of context): no U-Net or band split sees more than a chunk with its
    context, and the audio is the whole decode's but for the U-Nets' chunk-wide statistics (GroupNorm):
    2.6% relative RMS difference on these weights, 0.85% of the peak in the step between samples at a seam."""
    torch.manual_seed(0)
    frames, hop = 40, mbd.hop
    latent = torch.randn(1, 16, frames)
    t = torch.arange(frames * hop) / 32000
    ref = (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(t.shape))[None, None]
    seen = {"unet": 0, "split": 0}

    def record(kind):
        return lambda module, args: seen.__setitem__(kind, max(seen[kind], args[0].shape[-1]))

    hooks = [b.unet.register_forward_pre_hook(record("unet")) for b in mbd.bands]
    hooks += [m.register_forward_pre_hook(record("split")) for m in
              [mbd.re_eq_split] + [b.processor.split for b in mbd.bands if b.processor.used]]
    try:
        whole = mbd.decode(latent, ref, torch.Generator().manual_seed(1))
        assert seen == {"unet": frames * hop, "split": frames * hop}
        seen.update(unet=0, split=0)
        mbd.chunk_frames, mbd.context_frames = 10, 2
        spans = mbd.spans(frames * hop)
        out = mbd.decode(latent, ref, torch.Generator().manual_seed(1))
    finally:
        mbd.chunk_frames, mbd.context_frames = 1500, 50
        for hook in hooks:
            hook.remove()
    assert len(spans) == 4
    assert seen["unet"] == (10 + 2 * 2) * hop  # an inner chunk with its context on both sides
    assert seen["split"] <= 10 * hop + 2 * mbd.re_eq_split.half  # a chunk with its filters' reach
    assert out.shape == whole.shape and torch.isfinite(out).all()
    err = (out - whole)[0, 0]
    assert err.square().mean().sqrt() <= 0.1 * whole.square().mean().sqrt()
    peak = whole.abs().max()
    for start, _, _, _ in spans[1:]:  # no step at a seam: out's sample-to-sample change is the whole decode's
        assert err[start - 3 : start + 3].diff().abs().max() <= 0.02 * peak


def test_a_long_clip_keeps_the_seeds_audio(mbd):
    """Chunked or not, MBD's noise is the request generator's: same seed, same audio; another seed, another."""
    mbd.chunk_frames, mbd.context_frames = 4, 1
    try:
        latent, ref = torch.randn(1, 16, 12), 0.2 * torch.randn(1, 1, 12 * mbd.hop)
        one, two, other = (mbd.decode(latent, ref, torch.Generator().manual_seed(s), [999, 499, 0])
                           for s in (5, 5, 6))  # three passes a band: the noise's source shows as well as in 20
    finally:
        mbd.chunk_frames, mbd.context_frames = 1500, 50
    assert torch.equal(one, two) and (one - other).abs().max() > 1e-2


# --- working memory: the bounds the memory plan budgets, against what a decode really allocates --------------------

@pytest.mark.parametrize("config", [
    dict(hidden=8, depth=3, growth=2, kernel=8, stride=4, norm_groups=4, codec_dim=16),
    dict(hidden=8, depth=3, growth=2, kernel=8, stride=4, norm_groups=4, codec_dim=16, bilstm=True, emb_all_layers=True),
    dict(hidden=32, depth=3, growth=2, kernel=4, stride=2, norm_groups=4, codec_dim=16, res_blocks=2),
])
def test_a_unet_pass_works_within_its_planned_memory(config):
    from musicgen.engine.mbd import UNet
    from musicgen_dev.tensor_memory import PeakBytes

    torch.manual_seed(0)
    unet, samples = UNet(**config).eval(), 32000
    x, condition = torch.randn(1, 1, samples), torch.randn(1, 16, samples // 640)
    with torch.inference_mode(), PeakBytes() as peak:
        unet(x, 3, condition)
    planned = 4 * unet.floats_per_sample() * samples
    assert peak.peak <= planned <= 2 * peak.peak


@pytest.mark.parametrize("frames,chunk", [(40, 1500), (160, 20)])
def test_a_decode_works_within_its_planned_memory(mbd, frames, chunk):
    """Whole (40 frames) and in 8 chunks of 20 frames: the tensors a decode creates stay within
    ``working_bytes`` (what the memory plan budgets), which is no more than twice what they take."""
    from musicgen_dev.tensor_memory import PeakBytes

    torch.manual_seed(0)
    samples = frames * mbd.hop
    latent, ref = torch.randn(1, 16, frames), 0.2 * torch.randn(1, 1, samples)
    mbd.chunk_frames, mbd.context_frames = chunk, 2
    try:
        with PeakBytes() as peak:
            mbd.decode(latent, ref, torch.Generator().manual_seed(0), steps=[999, 500, 0])
        planned = mbd.working_bytes(samples)
    finally:
        mbd.chunk_frames, mbd.context_frames = 1500, 50
    assert peak.peak <= planned <= 2 * peak.peak


def test_the_memory_plan_budgets_mbd_bounded_by_its_chunks(mbd):
    """The plan's request-side work with MUSICGEN_DECODER=mbd: the MBD decode of the longest clip a request may
    ask for (300 s), which past one chunk grows only by ``CLIP_FLOATS`` per sample; decoded whole it would
    take several times more."""
    from musicgen.engine.mbd import CLIP_FLOATS, WORK_MARGIN
    from musicgen.inputs import MAX_DURATION
    from musicgen.serving import memory
    from musicgen_dev import gpu_memory

    rate = mbd.sample_rate
    longest, window = mbd.working_bytes(MAX_DURATION * rate), mbd.working_bytes(30 * rate)
    assert longest <= 1.1 * window + WORK_MARGIN * 4 * CLIP_FLOATS * (MAX_DURATION - 30) * rate
    mbd.chunk_frames = 10**9
    try:
        assert mbd.working_bytes(MAX_DURATION * rate) > 4 * longest
    finally:
        mbd.chunk_frames = 1500
    shapes = memory.ModelShapes.of(gpu_memory.config("facebook/musicgen-small"))
    encodec_only = memory.request_bytes(shapes, stems=False)
    assert memory.request_bytes(shapes, stems=False, mbd_bytes=longest) == max(encodec_only, longest)
    assert memory.request_bytes(shapes, stems=False, mbd_bytes=3 * encodec_only) == 3 * encodec_only


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


# --- the published weights: restricted unpickling, conversion, download, missing weights -----------------------

class _Planted:
    """What a malicious pickle carries: unpickling it would run a command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_the_checkpoint_converts_to_the_fixtures():
    """audiocraft's pickle (omegaconf configs included) read without omegaconf: the same configs and tensors."""
    import json

    from musicgen.engine.mbd_weights import read_checkpoint

    config, tensors = read_checkpoint(DATA / "mbd_tiny.th")
    assert config == json.loads((DATA / "mbd.json").read_text())
    expected = load_file(str(DATA / "mbd.safetensors"))
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)


def test_a_planted_payload_is_refused_before_it_runs(tmp_path):
    from musicgen import WeightsNotFoundError
    from musicgen.engine.mbd_weights import read_checkpoint

    marker = tmp_path / "ran"
    state = {"weight": torch.zeros(2)}
    pkg = {"sample_rate": 32000, "n_bands": 1, 0: {"cfg": _Planted(marker), "model_state": state,
                                                   "processor_state": {}}}
    torch.save(pkg, tmp_path / "mbd_musicgen_32khz.th")
    with pytest.raises(WeightsNotFoundError, match=r"posix.system is not allowed|os.system is not allowed") as info:
        read_checkpoint(tmp_path / "mbd_musicgen_32khz.th")
    assert not marker.exists()
    assert "python -m musicgen.hub --mbd" in str(info.value) and "\n" not in str(info.value)


def test_downloaded_verified_converted_once_and_loaded(tmp_path):
    import json
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from hub_stand_in import HubStandIn

    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(DATA / "mbd_tiny.th", published / "mbd_musicgen_32khz.th")
    (published / "README.md").write_text("not fetched\n")
    target = tmp_path / "mbd"
    with HubStandIn({"facebook/multiband-diffusion": published}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        cmd = [sys.executable, "-m", "musicgen.hub", "--mbd", "--dir", str(target)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((target / "musicgen-manifest.json").read_text())
        assert (manifest["repo"], manifest["commit"], manifest["state"]) == (
            "facebook/multiband-diffusion", hub.commit("facebook/multiband-diffusion"), "verified")
        assert sorted(manifest["files"]) == ["mbd.json", "mbd.safetensors", "mbd_musicgen_32khz.th"]
        assert manifest["files"]["mbd.safetensors"]["converted_from"] == ["mbd_musicgen_32khz.th"]
        assert manifest["files"]["mbd_musicgen_32khz.th"]["sha256"]
        converted = (target / "mbd.safetensors").stat().st_mtime_ns
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert again.returncode == 0, again.stderr
        assert (target / "mbd.safetensors").stat().st_mtime_ns == converted  # converted once
    from musicgen import Settings, WeightsNotFoundError
    from musicgen.hub import locate

    with pytest.raises(WeightsNotFoundError, match="is the folder of the MultiBand Diffusion weights .*MUSICGEN_MBD"):
        locate(Settings.from_env({"HF_HUB_OFFLINE": "1"}), directory=target)  # given as the MusicGen checkpoint
    ref = load_file(str(DATA / "reference.safetensors"))
    out = MultiBandDiffusion.load(target).decode(ref["decode.emb"], ref["decode.encodec"],
                                                 torch.Generator().manual_seed(SEED))
    close(out, ref["decode.out"])


def test_missing_weights_name_the_folder_and_the_command(tmp_path):
    from musicgen import Settings, WeightsNotFoundError
    from musicgen.hub import locate_mbd

    settings = Settings.from_env({"MUSICGEN_MBD_WEIGHTS": str(tmp_path / "mbd"), "HF_HUB_OFFLINE": "1"})
    with pytest.raises(WeightsNotFoundError) as info:
        locate_mbd(settings)
    sentence = str(info.value)
    assert str(tmp_path / "mbd") in sentence and "python -m musicgen.hub --mbd" in sentence
    assert "MUSICGEN_DECODER=mbd" in sentence and sentence.count(". ") == 0 and "\n" not in sentence


# --- the decoder as a setting: library request field, MUSICGEN_DECODER, --decoder, stereo ----------------------

@pytest.fixture(scope="module")
def mbd_settings():
    from musicgen import Settings

    return lambda **env: Settings.from_env({"MUSICGEN_MBD_WEIGHTS": str(DATA), "MUSICGEN_DEVICE": "cpu",
                                            "HF_HUB_OFFLINE": "1", **env})


def _samples(path):
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data, sr


def test_a_request_decoded_by_mbd_is_seeded_and_differs_from_encodec(checkpoints, mbd_settings, tmp_path):
    from musicgen import GenerationRequest, MusicGen

    service = MusicGen.load(checkpoints["plain"], settings=mbd_settings())
    assert service.settings.decoder == "encodec"  # the deployment's default; the request asks for MBD
    ask = dict(prompt="drums", duration=1, seed=7, normalization_strategy="peak")
    one = service.predict(GenerationRequest(**ask, decoder="mbd"), output_dir=tmp_path / "a").paths[0]
    two = service.predict(GenerationRequest(**ask, decoder="mbd"), output_dir=tmp_path / "b").paths[0]
    plain = service.predict(GenerationRequest(**ask), output_dir=tmp_path / "c").paths[0]
    assert one.read_bytes() == two.read_bytes()  # MBD's noise from the request's seed, not torch's global one
    other = service.predict(GenerationRequest(**{**ask, "seed": 8}, decoder="mbd"), output_dir=tmp_path / "d").paths[0]
    assert other.read_bytes() != one.read_bytes()
    (a, sr), (c, _) = _samples(one), _samples(plain)
    assert sr == 32000 and a.shape == c.shape == (32000, 1)
    assert np_max_abs(a - c) > 1e-3
    from musicgen import MusicGenError

    with pytest.raises(MusicGenError, match="cannot be streamed"):
        with service.stream(GenerationRequest(**ask, decoder="mbd")) as chunks:
            list(chunks)


def np_max_abs(x) -> float:
    return float(abs(x).max())


def test_stereo_is_decoded_channel_by_channel(checkpoints, mbd_settings):
    from musicgen import MusicGen

    service = MusicGen.load(checkpoints["plain-stereo"], settings=mbd_settings(MUSICGEN_DECODER="mbd"))
    eng, mbd = service.engine, service.mbd()
    codes = torch.randint(0, eng.codec.model.config.codebook_size, (eng.num_codebooks, 10))
    encodec_wav = eng.decode(codes)
    out = mbd.decode_codes(eng.codec.model.quantizer, codes, encodec_wav, torch.Generator().manual_seed(5))
    assert out.shape == encodec_wav.shape == (2, 6400)
    left = mbd.decode_codes(eng.codec.model.quantizer, codes[0::2], encodec_wav[:1], torch.Generator().manual_seed(5))
    close(out[:1], left)  # the left codebooks first, against the left EnCodec channel
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_mbd_asked_without_weights_refuses_setup_in_one_sentence(checkpoints, mbd_settings, tmp_path):
    from musicgen import MusicGen, WeightsNotFoundError

    settings = mbd_settings(MUSICGEN_DECODER="mbd", MUSICGEN_MBD_WEIGHTS=str(tmp_path / "none"))
    with pytest.raises(WeightsNotFoundError, match="python -m musicgen.hub --mbd") as info:
        MusicGen.load(checkpoints["plain"], settings=settings)
    assert str(tmp_path / "none") in str(info.value) and "\n" not in str(info.value)


def test_the_decoder_is_checked_where_it_is_given():
    from musicgen import GenerationRequest, MusicGenError, Settings

    with pytest.raises(MusicGenError, match="MUSICGEN_DECODER must be one of encodec, mbd, got 'wavenet'"):
        Settings.from_env({"MUSICGEN_DECODER": "wavenet"})
    with pytest.raises(MusicGenError, match="decoder must be one of encodec, mbd, got 'x'"):
        GenerationRequest(prompt="a", decoder="x")
    with pytest.raises(MusicGenError, match="MUSICGEN_DECODER=mbd .* cannot stream .* MUSICGEN_STREAM_CHUNK_S=0"):
        Settings.from_env({"MUSICGEN_DECODER": "mbd", "MUSICGEN_STREAM_CHUNK_S": "1"})  # refused at setup


def test_the_command_line_decodes_with_mbd(checkpoints, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "MUSICGEN_MBD_WEIGHTS": str(DATA), "MUSICGEN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "musicgen", "beat", "--weights", str(checkpoints["plain"]), "--duration", "1",
            "--seed", "3", "-q"]
    proc = subprocess.run(base + ["--decoder", "mbd", "-o", str(tmp_path / "m.wav")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _samples(tmp_path / "m.wav")[0].shape == (32000, 1)
    bad = subprocess.run(base + ["--decoder", "mbd", "-o", str(tmp_path / "n.wav")], capture_output=True, text=True,
                         env={**env, "MUSICGEN_MBD_WEIGHTS": str(tmp_path / "none")}, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and not (tmp_path / "n.wav").exists()
    assert "python -m musicgen.hub --mbd" in bad.stderr and str(tmp_path / "none") in bad.stderr


def test_a_batch_with_decoder_mbd_gives_the_librarys_audio(checkpoints, mbd_settings, tmp_path):
    import os
    import subprocess
    import sys

    from musicgen import GenerationRequest, MusicGen

    (tmp_path / "prompts.txt").write_text("lofi beat\n")
    command = Path(sys.executable).parent / "musicgen"
    env = {**os.environ, "MUSICGEN_MBD_WEIGHTS": str(DATA), "MUSICGEN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(command), "batch", "prompts.txt", "-o", "out", "--weights", str(checkpoints["plain"]),
                           "--duration", "1", "--seed", "3", "--decoder", "mbd", "-q"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    service = MusicGen.load(checkpoints["plain"], settings=mbd_settings())
    ours = service.predict(GenerationRequest(prompt="lofi beat", duration=1, seed=3, decoder="mbd"),
                           output_dir=tmp_path / "lib").paths[0]
    encodec = service.predict(GenerationRequest(prompt="lofi beat", duration=1, seed=3), output_dir=tmp_path / "e")
    batch = _samples(tmp_path / "out" / "0001.wav")[0]
    assert (batch == _samples(ours)[0]).all()
    assert not (batch == _samples(encodec.paths[0])[0]).all()
