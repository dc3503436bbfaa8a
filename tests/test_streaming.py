"""Streaming: EnCodec decoded incrementally equals the whole-clip decode; the library hands out audio while a
request is generated (text, continuation, long form, stereo), the final file unchanged; closing a stream frees
its place; `musicgen -o -` writes a playable WAV stream."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import read, readme_block
from musicgen import GenerationRequest, MusicGenError
from musicgen.engine.engine import Engine, WindowSettings
from musicgen.engine.loading import load
from musicgen.engine.streaming import StreamingDecoder

COMMAND = Path(sys.executable).parent / "musicgen"
LSB = 1 / 32768  # the files are 16-bit


@pytest.mark.parametrize("kind", ["plain", "plain-stereo"])
def test_incremental_decoding_equals_the_whole_decode(checkpoints, kind):
    """Codes pushed a few frames at a time, in Codec.decode's chunk plan (a clip within one chunk, and clips
    crossing chunk boundaries: a fresh LSTM from each chunk's context, as the whole decode has it)."""
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    codec = Engine(model, tokenizer, precision="fp32").codec
    gen = torch.Generator().manual_seed(0)
    for frames, chunk, context in [(60, None, None), (130, 40, 10), (97, 40, 10), (3, None, None)]:
        codes = torch.randint(0, 2048, (codec.num_codebooks, frames), generator=gen)
        whole = codec.decode(codes, chunk, context)
        stream = StreamingDecoder(codec, chunk, context)
        pieces, done = [], 0
        while done < frames:
            n = int(torch.randint(1, 12, (1,), generator=gen))
            pieces.append(stream.push(codes[:, done : done + n]))
            done += n
            # audio is final a few frames behind the codes, never more
            assert sum(p.shape[-1] for p in pieces) >= (min(done, frames) - stream.lookahead() - 1) * codec.hop or \
                chunk is not None
        pieces.append(stream.finish())
        streamed = torch.cat(pieces, dim=-1)
        assert streamed.shape == whole.shape == (codec.channels, frames * codec.hop)
        assert (streamed - whole).abs().max() <= 1e-4, (frames, chunk)


@pytest.fixture(scope="module")
def model(checkpoints):
    from musicgen import MusicGen

    # short windows: a 3 s request is long form (several windows) on the tiny checkpoints
    return MusicGen.load(checkpoints["plain"], device="cpu", windows=WindowSettings(window_s=1.0, stride_s=0.6))


def _stream(model, request, chunk_seconds=0.25):
    chunks = []
    with model.stream(request, chunk_seconds=chunk_seconds) as stream:
        for chunk in stream:
            chunks.append((chunk, stream.result))
    return [c for c, _ in chunks], [r for _, r in chunks], stream.result


@pytest.mark.parametrize("continuation", [False, True])
def test_a_stream_hands_out_the_audio_while_it_is_made_and_the_file_is_unchanged(model, audio_files, tmp_path,
                                                                                 continuation):
    inputs = dict(prompt="lofi", duration=3, seed=11, normalization_strategy="clip")
    if continuation:  # the prompt's audio comes first, as in the file
        inputs |= dict(input_audio=audio_files["wav"], continuation=True, continuation_end=1)
    request = GenerationRequest(**inputs)
    chunks, results_seen, result = _stream(model, request)
    assert len(chunks) >= 4 and results_seen[0] is None  # audio before the prediction was done
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    starts = np.cumsum([0] + [c.samples.shape[-1] for c in chunks[:-1]]) / model.sample_rate
    assert np.allclose([c.start for c in chunks], starts)
    assert all(c.sample_rate == model.sample_rate and np.abs(c.samples).max() <= 1 for c in chunks)
    streamed = np.concatenate([c.samples for c in chunks], axis=-1)
    written, _ = read(result.paths[0])
    assert streamed.shape == written.shape == (1, 3 * model.sample_rate)
    assert np.abs(streamed - written).max() <= LSB + 1e-6  # clip normalization: the file is the stream in 16 bits
    alone = model.predict(request, output_dir=tmp_path)  # and streaming changed nothing in it
    assert alone.paths[0].read_bytes() == result.paths[0].read_bytes()


def test_stereo_streams_both_channels(checkpoints):
    from musicgen import MusicGen

    stereo = MusicGen.load(checkpoints["plain-stereo"], device="cpu")
    chunks, _, result = _stream(stereo, GenerationRequest(prompt="x", duration=2, seed=2, normalization_strategy="clip"))
    streamed = np.concatenate([c.samples for c in chunks], axis=-1)
    written, _ = read(result.paths[0])
    assert streamed.shape == written.shape and streamed.shape[0] == 2
    assert np.abs(streamed - written).max() <= LSB + 1e-6


def test_closing_a_stream_frees_its_place_at_once(checkpoints):
    from musicgen import MusicGen

    single = MusicGen.load(checkpoints["plain"], device="cpu", concurrency=1)
    stream = single.stream(GenerationRequest(prompt="endless", duration=300, seed=1), chunk_seconds=0.1)
    first = next(stream)
    assert not first.last
    stream.close()
    assert stream.result is None
    assert all(job is None for job in single.scheduler.active)  # its slot is free
    done = threading.Event()
    threading.Thread(target=lambda: (single.predict(GenerationRequest(duration=1, seed=1)), done.set()),
                     daemon=True).start()
    assert done.wait(120), "the next request waited for the closed stream"


def test_a_failed_stream_raises_its_error_to_the_reader(model):
    with pytest.raises(MusicGenError, match="input_audio"):
        list(model.stream(GenerationRequest(prompt="x", duration=2, continuation=True)))


def test_the_command_line_streams_a_wav_to_stdout(checkpoints, tmp_path):
    env = {**os.environ, "MUSICGEN_WEIGHTS": str(checkpoints["plain"])}
    args = [str(COMMAND), "lofi", "--duration", "2", "--seed", "4", "--normalization-strategy", "clip"]
    streamed = subprocess.run([*args, "-o", "-", "--stream-chunk", "0.3"], capture_output=True, env=env, timeout=300)
    assert streamed.returncode == 0, streamed.stderr.decode()[-2000:]
    data = streamed.stdout
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    channels, rate = struct.unpack("<HI", data[22:28])
    samples = np.frombuffer(data[44:], dtype="<i2").reshape(-1, channels).T / 32768
    written = subprocess.run([*args, "-o", str(tmp_path / "x.wav")], capture_output=True, env=env, timeout=300)
    assert written.returncode == 0, written.stderr.decode()[-2000:]
    wav, sr = sf.read(tmp_path / "x.wav", dtype="float32", always_2d=True)
    assert rate == sr and samples.shape == wav.T.shape
    assert np.abs(samples - wav.T).max() <= LSB + 1e-6
    refused = subprocess.run([*args, "-o", "-", "--output-format", "mp3"], capture_output=True, env=env, timeout=300)
    assert refused.returncode == 2 and refused.stderr.decode().strip().splitlines()[-1] == (
        "error: -o - streams WAV; --output-format mp3 cannot be streamed: leave it out, or write a file with "
        "-o NAME.mp3.")


def test_the_readmes_streaming_command_runs_as_written(checkpoints, tmp_path):
    """The README's `-o - | ffplay` line, the player replaced by a file: a WAV stream of the whole clip."""
    script = readme_block("-o - |").replace(".venv/bin/musicgen", str(COMMAND))
    script = script.replace("ffplay -nodisp -autoexit -", "cat > stream.wav").replace("--duration 30", "--duration 3")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                          timeout=600, env={**os.environ, "MUSICGEN_WEIGHTS": str(checkpoints["plain"])})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    data = (tmp_path / "stream.wav").read_bytes()
    channels, rate = struct.unpack("<HI", data[22:28])
    assert data[:4] == b"RIFF" and (channels, rate) == (1, 32000)
    assert len(data) - 44 == 3 * rate * 2 * channels
