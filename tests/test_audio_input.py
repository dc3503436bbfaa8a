"""Audio input: every real format decodes to the right length and pitch; every hostile file is refused
with its own sentence, through the predictor, without harming the next prediction."""

from __future__ import annotations

import io
import os
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch
from cog import Path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SR, run
from musicgen import MusicGenError
from musicgen.audio import audio_io
from musicgen.inputs import MAX_DURATION

FREQ = 440.0
SECONDS = 2.0


def sine(sr: int, channels: int = 1, seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * FREQ * t)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_aac(path, data: np.ndarray, sr: int) -> None:
    import av

    layout = {1: "mono", 2: "stereo", 8: "7.1"}[data.shape[1]]
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sr, layout=layout)
        frame_size = 1024
        pts = 0
        for i in range(0, data.shape[0], frame_size):
            chunk = np.ascontiguousarray(data[i : i + frame_size])  # packed: PyAV mishandles 8 planes
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout=layout)
            frame.sample_rate, frame.pts = sr, pts
            pts += chunk.shape[0]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# (name, writer kwargs, rate, channels, lossy)
REAL = [
    ("wav-u8", dict(format="WAV", subtype="PCM_U8"), 22050, 1, False),
    ("wav-16", dict(format="WAV", subtype="PCM_16"), 44100, 2, False),
    ("wav-24", dict(format="WAV", subtype="PCM_24"), 48000, 2, False),
    ("wav-32", dict(format="WAV", subtype="PCM_32"), 96000, 1, False),
    ("wav-float", dict(format="WAV", subtype="FLOAT"), 192000, 2, False),
    ("wav-double", dict(format="WAV", subtype="DOUBLE"), 8000, 1, False),
    ("wav-5.1", dict(format="WAV", subtype="PCM_16"), 48000, 6, False),
    ("wav-44056", dict(format="WAV", subtype="PCM_16"), 44056, 2, False),  # an odd rate: libswresample
    ("wav-7.1", dict(format="WAV", subtype="PCM_24"), 44100, 8, False),
    ("flac", dict(format="FLAC"), 44100, 2, False),
    ("flac-8ch", dict(format="FLAC"), 96000, 8, False),
    ("aiff", dict(format="AIFF", subtype="PCM_16"), 44100, 2, False),
    ("ogg-vorbis", dict(format="OGG", subtype="VORBIS"), 44100, 2, True),
    ("opus", dict(format="OGG", subtype="OPUS"), 48000, 2, True),
    ("mp3-44k", dict(format="MP3"), 44100, 2, True),
    ("mp3-16k", dict(format="MP3"), 16000, 1, True),
    ("m4a-aac", "aac", 44100, 2, True),
    ("m4a-aac-mono", "aac", 22050, 1, True),
    ("m4a-aac-7.1", "aac", 48000, 8, True),  # decoded by FFmpeg (PyAV), with 8 planes
]


@pytest.mark.parametrize("name,kwargs,sr,channels,lossy", REAL, ids=[r[0] for r in REAL])
def test_real_formats_decode_to_right_length_and_pitch(tmp_path, name, kwargs, sr, channels, lossy):
    path = tmp_path / "upload"  # no extension: the decoder must be chosen by content
    data = sine(sr, channels)
    if kwargs == "aac":
        write_aac(path, data, sr)
    else:
        sf.write(path, data, sr, **kwargs)
    info = audio_io.probe(path)
    assert (info.sample_rate, info.channels) == (sr, channels)
    wav = audio_io.to_model(audio_io.read(info), info, SR, 1)
    expected = int(SECONDS * SR)
    tolerance = 1 if not lossy else int(2112 * SR / sr) + 1  # encoder delay/padding of one lossy frame
    assert wav.shape[0] == 1 and abs(wav.shape[1] - expected) <= tolerance, wav.shape
    x = wav[0].numpy()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    assert np.fft.rfftfreq(x.size, 1 / SR)[spectrum.argmax()] == pytest.approx(FREQ, abs=2.0)


def test_any_sample_rate_resamples_in_bounded_memory(tmp_path):
    """julius' kernels for a ratio such as 96,129 Hz -> 32 kHz would need tens of GB: a hostile header
    must not take the worker down. Decoded in a child process limited to 4 GB of address space."""
    import subprocess
    import sys

    path = tmp_path / "odd.wav"
    sf.write(path, sine(96129, 1, 3.0), 96129, format="WAV", subtype="PCM_16")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from musicgen.audio import audio_io\n"
        "wav = audio_io.load_prompt(sys.argv[1], 0, None, 32000, 1)\n"
        "print(wav.shape[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert abs(int(done.stdout.split()[-1]) - 3 * SR) <= 1


def test_streaming_wav_with_unknown_length_is_valid(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, sine(SR), SR, format="WAV", subtype="PCM_16")
    raw = bytearray(buf.getvalue())
    raw[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data_at = raw.index(b"data")
    raw[data_at + 4 : data_at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(raw))
    info = audio_io.probe(path)
    assert audio_io.read(info).shape[1] == pytest.approx(SECONDS * SR, abs=1)


def test_only_the_needed_window_of_a_long_file_is_decoded(tmp_path):
    path = tmp_path / "hour.flac"
    with sf.SoundFile(path, "w", 8000, 1, format="FLAC") as f:  # one hour of audio
        block = sine(8000, 1, 60.0)
        for _ in range(60):
            f.write(block)
    info = audio_io.probe(path)
    assert info.seconds == pytest.approx(3600)
    part = audio_io.read(info, 1800.0, 1802.5)
    assert part.shape == (1, int(2.5 * 8000))


# ---------------------------------------------------------------- the hostile corpus
def _wav(data, sr=SR, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _png() -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("song.wav", _wav(sine(SR)))
    return buf.getvalue()


def _claims_more() -> bytes:
    raw = bytearray(_wav(sine(SR)))
    at = raw.index(b"data")
    size = struct.unpack("<I", raw[at + 4 : at + 8])[0]
    raw[at + 4 : at + 8] = struct.pack("<I", size * 3)
    return bytes(raw)


def _broken_fmt() -> bytes:
    raw = bytearray(_wav(sine(SR)))
    at = raw.index(b"fmt ")
    raw[at + 8 : at + 24] = b"\xff" * 16
    return bytes(raw)


def _flac_cut() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(SR, 1, 4.0), SR, format="FLAC")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _ogg_cut() -> bytes:
    buf = io.BytesIO()  # noise, so that audio pages (not the codec headers) make up most of the file
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, (4 * 44100, 2)).astype(np.float32)
    sf.write(buf, noise, 44100, format="OGG", subtype="VORBIS")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _with_sample(value) -> bytes:
    data = sine(SR)
    data[1000] = value
    return _wav(data, subtype="FLOAT")


NOT_AUDIO = "input_audio could not be decoded as audio; upload a complete wav, mp3, flac, ogg/vorbis, opus, m4a/aac or aiff file."
HOSTILE = {
    # name: (bytes or callable, expected sentence, continuation?)
    "empty": (lambda: b"", "input_audio is an empty file (0 bytes); upload a non-empty audio file.", True),
    "text-as-wav": (lambda: b"hello, this is not audio\n" * 40, NOT_AUDIO, True),
    "png-as-wav": (_png, NOT_AUDIO, True),
    "random-bytes": (lambda: np.random.default_rng(0).bytes(50_000), NOT_AUDIO, True),
    "zip-as-wav": (_zip, NOT_AUDIO, True),
    "json-as-mp3": (lambda: json.dumps({"audio": [0.1] * 500}).encode(), NOT_AUDIO, True),
    "midi-as-wav": (lambda: b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00", NOT_AUDIO, True),
    "broken-fmt-chunk": (_broken_fmt, NOT_AUDIO, True),
    "header-only": (lambda: _wav(np.zeros((0, 1), np.float32)), "input_audio holds no audio samples; upload a file with sound in it.", True),
    "header-claims-more": (_claims_more, "input_audio is truncated: its header promises 6.00 s of audio but the file holds only 2.00 s; upload the complete file.", True),
    "wav-cut-in-half": (lambda: _wav(sine(SR))[: len(_wav(sine(SR))) // 2], "input_audio is truncated: its header promises 2.00 s of audio but the file holds only 1.00 s", True),
    "flac-cut": (_flac_cut, "input_audio is damaged or truncated", True),
    "nan-sample": (lambda: _with_sample(np.nan), "input_audio contains invalid samples (NaN or infinity)", True),
    "inf-sample": (lambda: _with_sample(np.inf), "input_audio contains invalid samples (NaN or infinity)", True),
    "one-sample": (lambda: _wav(np.full((1, 1), 0.5, np.float32)), "The continuation prompt is only 0.00 s long; it must hold at least 0.5 s of audio.", True),
    "tenth-second": (lambda: _wav(sine(SR, 1, 0.1)), "The continuation prompt is only 0.10 s long; it must hold at least 0.5 s of audio.", True),
    "tenth-second-melody": (lambda: _wav(sine(SR, 1, 0.1)), "input_audio is only 0.10 s long; it must hold at least 0.5 s of audio.", False),
    "silent-melody": (lambda: _wav(np.zeros((SR * 2, 1), np.float32)), "input_audio is silent, so it has no melody to follow", False),
    "ten-channels": (lambda: _wav(sine(SR, 10)), "input_audio has 10 channels; at most 8 are supported.", True),
    "rate-4k": (lambda: _wav(sine(4000), 4000), "input_audio has a sample rate of 4000 Hz; supported rates are 8000 to 192000 Hz.", True),
    "rate-384k": (lambda: _wav(sine(384000), 384000), "input_audio has a sample rate of 384000 Hz; supported rates are 8000 to 192000 Hz.", True),
    "prompt-over-limit": (lambda: _wav(sine(8000, 1, 301.0), 8000), "The continuation prompt (301.00 s of input_audio) must be shorter than duration (1 s), which is the length of the whole output, prompt included; choose a shorter part with continuation_start and continuation_end.", True),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_refused_with_its_sentence(melody_predictor, tmp_path, name):
    make, sentence, continuation = HOSTILE[name]
    path = tmp_path / "upload.wav"
    path.write_bytes(make())
    with pytest.raises(MusicGenError) as err:
        run(melody_predictor, input_audio=Path(path), continuation=continuation, duration=1, seed=1)
    assert sentence in str(err.value)
    assert "\n" not in str(err.value)


def test_oversized_upload_is_refused_before_decoding(melody_predictor, tmp_path):
    path = tmp_path / "huge.wav"
    with open(path, "wb") as f:
        f.write(_wav(sine(SR)))
        f.truncate(audio_io.MAX_UPLOAD_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(MusicGenError, match=r"input_audio is 200.0 MiB, over the 200.0 MiB limit"):
        run(melody_predictor, input_audio=Path(path), continuation=True, duration=1)


def test_predictor_still_works_after_the_hostile_corpus(melody_predictor, tmp_path):
    path = tmp_path / "ok.wav"
    path.write_bytes(_wav(sine(SR)))
    out = run(melody_predictor, input_audio=Path(path), continuation=True, duration=3, seed=1)
    assert sf.info(str(out)).frames == 3 * SR  # the 2 s prompt and 1 s of new audio


def test_ogg_stream_cut_short_decodes_what_it_holds(tmp_path):
    path = tmp_path / "cut.ogg"
    path.write_bytes(_ogg_cut())  # Ogg has no length in its header: a cut stream is a shorter stream
    info = audio_io.probe(path)
    data = audio_io.read(info)
    assert 0.5 * 44100 < data.shape[1] < 4.0 * 44100 and np.isfinite(data).all()


# ---------------------------------------------------------------- robustness as a property
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[bytes]:
    """Every real format of REAL, encoded once: the seeds the mutations start from."""
    d = tmp_path_factory.mktemp("corpus")
    files = []
    for name, kwargs, sr, channels, _ in REAL:
        path = d / name
        data = sine(sr, channels, 1.0)
        if kwargs == "aac":
            write_aac(path, data, sr)
        else:
            sf.write(path, data, sr, **kwargs)
        files.append(path.read_bytes())
    return files


@st.composite
def damaged(draw, corpus):
    """A corpus file cut at a random offset and/or with random bytes overwritten."""
    data = bytearray(draw(st.sampled_from(corpus)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


def test_damaged_files_decode_within_limits_or_fail_with_one_sentence(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "upload"
    outcomes = {"decoded": 0, "refused": 0}

    @given(damaged(corpus), st.booleans())
    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None, derandomize=not os.environ.get("FUZZ_EXAMPLES"), database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def check(data: bytes, as_melody: bool):
        path.write_bytes(data)
        try:
            if as_melody:
                wav = audio_io.load_melody(path, 30.0, SR, 1)
            else:
                wav = audio_io.load_prompt(path, 0, None, SR, 2)
        except MusicGenError as err:
            message = str(err)
            assert message and "\n" not in message and message.endswith("."), message
            outcomes["refused"] += 1
            return
        assert wav.dtype == torch.float32 and wav.shape[0] == (1 if as_melody else 2)
        assert audio_io.MIN_AUDIO_SECONDS * SR <= wav.shape[1] <= (MAX_DURATION + 1) * SR
        assert torch.isfinite(wav).all()
        outcomes["decoded"] += 1

    check()
    assert outcomes["decoded"] > 10 and outcomes["refused"] > 10, outcomes  # both sides were exercised
