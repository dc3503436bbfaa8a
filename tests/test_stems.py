"""Melody stems (Demucs before the chroma, as audiocraft's ChromaStemConditioner), the separation weights, and
audiocraft's window and normalization details; random-weight HTDemucs and MusicGen-Melody built offline."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys

import julius
import numpy as np
import pytest
import soundfile as sf
import torch
from cog import Path

from conftest import SR, read, tone
from musicgen import GenerationRequest, MusicGenError, WeightsNotFoundError
from musicgen.engine.chroma import chroma
from musicgen.engine.engine import Engine, WindowSettings
from musicgen.engine.loading import load
from musicgen.serving.service import MusicGen
from musicgen.settings import Settings
from musicgen.engine.stems import MELODY_STEMS, StemSeparator


def mix_file(path, sr: int, channels: int, seconds: float = 4.0) -> Path:
    """A melody over a bass line and a noise 'drum' (so stems and mix differ)."""
    melody = tone([523.25, 659.25, 783.99, 1046.5], seconds, sr, amp=0.3)
    bass = tone([65.41, 98.0], seconds, sr, amp=0.5)
    drums = np.random.default_rng(0).uniform(-0.2, 0.2, melody.size).astype(np.float32)
    mono = melody + bass + drums
    data = mono if channels == 1 else np.stack([mono, melody + 0.5 * bass], axis=1)
    sf.write(path, data, sr)
    return Path(path)


def expected_chroma(path, separator: StemSeparator, channels: int, frames: int) -> torch.Tensor:
    """The stem chroma computed here independently: the file at the model's rate and channels (julius, as
    audiocraft's convert_audio), to HTDemucs' rate and channels, demucs' apply_model with the same shift
    seed, vocals + other, back to the model's rate in mono, chroma of the first window."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.T.copy())
    wav = wav.mean(0, keepdim=True) if channels == 1 else (wav if wav.shape[0] == 2 else wav.expand(2, -1))
    wav = julius.resample_frac(wav, sr, SR)
    model = separator.model
    mix = wav.expand(2, -1) if wav.shape[0] == 1 else wav
    mix = julius.resample_frac(mix, SR, model.samplerate)
    from demucs.apply import apply_model

    random.seed(StemSeparator.shift_seed(wav, SR))
    with torch.no_grad():
        stems = apply_model(model, mix[None])[0]
    sources = list(model.sources)
    melody = stems[sources.index("vocals")] + stems[sources.index("other")]
    melody = julius.resample_frac(melody.mean(0, keepdim=True), model.samplerate, SR)[0]
    melody = torch.nn.functional.pad(melody, (0, max(0, wav.shape[-1] - melody.numel())))[: wav.shape[-1]]
    return chroma(melody[:frames], SR), chroma(wav.mean(0)[:frames], SR)


@pytest.fixture(scope="module")
def melody_service(checkpoints):
    return MusicGen.load(checkpoints["melody"], device="cpu")


def chromas_of(service, **request) -> tuple[list[torch.Tensor], Path]:
    events = []
    result = service.predict(GenerationRequest(**request), on_window=events.append)
    return [e.melody_chroma for e in events], result.paths[0]


@pytest.mark.parametrize("channels", [1, 2])
def test_stem_chroma_equals_demucs_vocals_plus_other_computed_independently(melody_service, tmp_path, channels):
    path = mix_file(tmp_path / "mix.wav", 44100, channels)
    [used], _ = chromas_of(melody_service, prompt="piano", input_audio=path, duration=1, seed=1)
    separator = melody_service.engine.separator
    assert separator is not None and MELODY_STEMS == ("vocals", "other")
    window = melody_service.engine.window_frames * melody_service.engine.codec.hop
    stems, raw = expected_chroma(path, separator, 1, window)
    assert torch.equal(used, stems)
    assert not torch.equal(used, raw)  # the raw mix's chroma is another one


def test_a_stereo_checkpoint_separates_the_stereo_melody(checkpoints, tmp_path):
    service = MusicGen.load(checkpoints["melody-stereo"], device="cpu")
    path = mix_file(tmp_path / "mix.wav", 44100, 2)
    [used], out = chromas_of(service, input_audio=path, duration=1, seed=2)
    window = service.engine.window_frames * service.engine.codec.hop
    stems, _ = expected_chroma(path, service.engine.separator, 2, window)
    assert torch.equal(used, stems)
    assert read(out)[0].shape == (2, SR)


def test_same_seed_same_bytes_and_a_melody_sent_again_is_not_separated_again(melody_service, tmp_path, caplog):
    path = mix_file(tmp_path / "again.wav", 48000, 1, seconds=3.0)
    separator = melody_service.engine.separator
    before = separator.separations
    caplog.set_level(logging.INFO, logger="musicgen.engine.stems")
    first = melody_service.predict(GenerationRequest(input_audio=path, duration=1, seed=5)).paths[0]
    first_bytes = first.read_bytes()
    assert separator.separations == before + 1 and "melody stems: separating 3.0 s" in caplog.text
    caplog.clear()
    again = melody_service.predict(GenerationRequest(input_audio=path, duration=1, seed=5)).paths[0]
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(first_bytes).digest()
    assert separator.separations == before + 1 and "from the cache" in caplog.text
    other_seed = melody_service.predict(GenerationRequest(input_audio=path, duration=1, seed=6)).paths[0]
    assert separator.separations == before + 1  # the stems depend on the melody alone
    assert other_seed.read_bytes() != first_bytes


def test_the_cache_is_bounded(monkeypatch, stems_weights):
    from musicgen.engine import stems as stems_module

    monkeypatch.setattr(stems_module, "CACHE_BYTES", 2 * SR * 4)  # room for two seconds of melody
    separator = StemSeparator.load(stems_weights, torch.device("cpu"))
    melodies = [torch.from_numpy(tone([f], 1.0))[None] for f in (220.0, 330.0, 440.0)]
    for wav in melodies:
        separator.melody(wav, SR)
    assert separator.separations == 3 and len(separator.cache) == 2
    separator.melody(melodies[2], SR)  # the newest is kept
    assert separator.separations == 3
    separator.melody(melodies[0], SR)  # the oldest was dropped
    assert separator.separations == 4 and len(separator.cache) == 2


def test_opting_out_takes_the_raw_mix_and_says_so_on_every_melody_request(checkpoints, tmp_path, caplog):
    service = MusicGen.load(checkpoints["melody"], settings=Settings.from_env(device="cpu", melody_stems=False))
    assert service.engine.separator is None
    path = mix_file(tmp_path / "raw.wav", 44100, 1)
    caplog.set_level(logging.INFO, logger="musicgen.serving.service")
    for seed in (1, 2):
        caplog.clear()
        [used], _ = chromas_of(service, input_audio=path, duration=1, seed=seed)
        assert "MUSICGEN_MELODY_STEMS=0: the melody chroma is taken from the raw mix" in caplog.text
    window = service.engine.window_frames * service.engine.codec.hop
    data, sr = sf.read(str(path), dtype="float32")
    raw = julius.resample_frac(torch.from_numpy(data)[None], sr, SR)[0]
    assert torch.equal(used, chroma(raw[:window], SR))


def test_missing_separation_weights_fail_melody_requests_with_one_sentence(checkpoints, tmp_path, audio_files):
    settings = Settings.from_env(device="cpu", stems_weights=tmp_path / "no-stems", offline=True)
    service = MusicGen.load(checkpoints["melody"], settings=settings)  # setup does not fail
    with pytest.raises(MusicGenError) as err:
        service.predict(GenerationRequest(input_audio=Path(audio_files["wav"]), duration=1))
    assert str(err.value) == (
        f"Following a melody needs the htdemucs stem separation bag (adefossez/HTDemucs), which is not usable "
        f"in {tmp_path / 'no-stems'} and HF_HUB_OFFLINE is set: run `make weights` (python -m musicgen.hub --stems) "
        "where the Hugging Face Hub is reachable, set MUSICGEN_STEMS_WEIGHTS to a directory holding it, or set "
        "MUSICGEN_MELODY_STEMS=0 to follow the raw mix's melody.")
    text = service.predict(GenerationRequest(prompt="jazz", duration=1, seed=1)).paths[0]  # text still works
    assert read(text)[0].shape == (1, SR)
    cont = service.predict(GenerationRequest(input_audio=Path(audio_files["wav"]), continuation=True, duration=5))
    assert read(cont.paths[0])[0].shape == (1, 5 * SR)  # the 4 s prompt and 1 s of new audio


def test_damaged_separation_weights_fail_melody_requests_not_setup(checkpoints, stems_weights, tmp_path, audio_files):
    import shutil

    broken = shutil.copytree(stems_weights, tmp_path / "broken")
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    service = MusicGen.load(checkpoints["melody"], settings=Settings.from_env(device="cpu", stems_weights=broken))
    with pytest.raises(MusicGenError, match=r"The melody stem separation weights in .*broken could not be loaded"):
        service.predict(GenerationRequest(input_audio=Path(audio_files["wav"]), duration=1))


def test_separation_weights_settings_and_hub_layout(stems_weights):
    from musicgen import hub
    from musicgen.engine import stems

    assert Settings.from_env({}).stems_dir.name == "htdemucs" and Settings.from_env({}).melody_stems
    assert Settings.from_env({"MUSICGEN_MELODY_STEMS": "0"}).melody_stems is False
    with pytest.raises(MusicGenError, match=r"MUSICGEN_MELODY_STEMS must be 1 or 0"):
        Settings.from_env({"MUSICGEN_MELODY_STEMS": "maybe"})
    assert stems.has_weights(stems_weights) and not stems.has_weights(stems_weights.parent)
    assert hub.STEMS.repo == "adefossez/HTDemucs" and hub.STEMS.missing(stems_weights) == []


def test_separation_weights_download_through_the_hub_client(stems_weights, tmp_path):
    from hub_stand_in import HubStandIn
    from musicgen import hub

    with HubStandIn({"adefossez/HTDemucs": stems_weights}) as stand_in:
        env = {**os.environ, "HF_ENDPOINT": stand_in.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
        done = subprocess.run([sys.executable, "-m", "musicgen.hub", "--stems", "--dir", str(tmp_path / "bag")],
                              capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "bag").iterdir() if p.is_file()) == sorted(
        [p.name for p in stems_weights.iterdir()] + ["musicgen-manifest.json"])
    assert "adefossez/HTDemucs at main" in done.stdout and ": verified" in done.stdout
    settings = Settings.from_env(device="cpu", stems_weights=tmp_path / "bag", offline=True)
    assert hub.locate_stems(settings, allow_download=False) == tmp_path / "bag"


def test_demucs_imports_without_its_audio_file_extras():
    code = ("import sys, musicgen.engine.stems, demucs.apply, demucs.hf, demucs.htdemucs\n"
            "print(sorted(m for m in ('lameenc', 'sphn', 'torchaudio') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-1000:]


# ---------------------------------------------------------------- audiocraft's window details
def test_a_continuation_prompt_shorter_than_a_window_is_the_first_windows_whole_context(checkpoints):
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))  # 100 frames, stride 60
    # audiocraft: a 75-frame prompt fills its first window with 25 new frames, then windows of 40 + 60
    assert engine.plan(75, 150) == [(75, 25), (40, 60), (40, 60), (40, 5)]
    prompt = torch.randint(0, 2048, (engine.num_codebooks, 75), generator=torch.Generator().manual_seed(0))
    events = []
    engine.generate_codes("x", 150, engine_params(), torch.Generator().manual_seed(1), prompt_codes=prompt,
                          on_window=events.append)
    assert torch.equal(events[0].context, prompt) and [e.context.shape[1] for e in events] == [75, 40, 40, 40]


def engine_params():
    from musicgen.engine.sampling import SamplingParams

    return SamplingParams(top_k=50)


def test_the_melody_is_read_far_enough_for_the_last_window(checkpoints, tmp_path, caplog):
    model, tokenizer = load(checkpoints["melody"], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=2.0, stride_s=1.2))
    # 3 s: windows start at 0 and 1.2 s, so the last reads the melody up to 3.2 s
    assert engine.melody_seconds(3) == pytest.approx(3.2)
    assert engine.melody_seconds(1) == pytest.approx(2.0)
    melody = torch.from_numpy(tone([262.0, 330.0, 392.0, 494.0, 587.0, 698.0, 784.0, 880.0], 4.0))
    read_part = melody[: int(engine.melody_seconds(3) * SR)]
    events = []
    engine.generate_codes("x", 150, engine_params(), torch.Generator().manual_seed(1), melody_wav=read_part,
                          on_window=events.append)
    last = events[-1]
    start = last.start_frame * engine.codec.hop
    unwrapped = chroma(melody[start : start + engine.window_frames * engine.codec.hop], SR)
    assert last.start_frame == 60 and torch.equal(last.melody_chroma, unwrapped)


def test_the_service_reads_the_melody_span_the_windows_need(checkpoints, tmp_path, caplog):
    service = MusicGen.load(checkpoints["melody"], device="cpu", windows=WindowSettings(window_s=2.0, stride_s=1.2))
    path = tmp_path / "long.wav"
    sf.write(path, tone([262.0, 330.0, 392.0, 494.0, 587.0, 698.0, 784.0, 880.0], 4.0), SR)
    caplog.set_level(logging.INFO, logger="musicgen.serving.service")
    events = []
    service.predict(GenerationRequest(input_audio=Path(path), duration=3, seed=1), on_window=events.append)
    assert "melody: reading up to 3.20 s of input_audio" in caplog.text
    stems = service.engine.melody_source(torch.from_numpy(sf.read(str(path), dtype="float32")[0][: int(3.2 * SR)])[None])
    start = events[-1].start_frame * service.engine.codec.hop
    assert torch.equal(events[-1].melody_chroma, chroma(stems[start : start + 2 * SR], SR))


@pytest.mark.parametrize("strategy", ["peak", "rms"])
def test_peak_and_rms_normalize_quiet_audio_below_the_loudness_floor(strategy):
    from musicgen.audio import normalize

    quiet = tone([440.0], 2.0, amp=1e-3)[None]  # RMS 7e-4, under loudness' 2e-3 floor
    out = normalize.normalize(quiet, SR, strategy)
    if strategy == "peak":
        assert np.abs(out).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    else:
        assert 20 * np.log10(np.sqrt(np.mean(out**2))) == pytest.approx(-18.0, abs=1e-3)
    assert np.array_equal(normalize.normalize(quiet, SR, "loudness"), quiet)  # the floor stays for loudness
    tiny = np.full((1, SR), 1e-42, np.float32)  # a gain that would overflow float32: left as it is, no inf
    assert np.array_equal(normalize.normalize(tiny, SR, strategy), tiny)
