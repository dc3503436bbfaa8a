"""Peak working memory of the request-side work, measured on the CPU with the real layouts (random weights):
one EnCodec chunk decoded and encoded (32 kHz, 50 Hz, a 30 s window plus 50 frames of context each side),
T5-base over 512 tokens, one HTDemucs segment. Each runs in a fresh process; the figure is the growth of
its peak resident memory over the loaded model's. The GPU's caching allocator and cuDNN workspaces differ,
so ``musicgen.serving.memory`` plans with these figures rounded up.

    .venv/bin/python bench/request_memory.py
"""

from __future__ import annotations

import resource
import subprocess
import sys

WORKS = ("encodec-decode", "encodec-encode", "t5", "htdemucs")
CHUNK_FRAMES = 1500 + 2 * 50  # a window and its context on both sides (musicgen.engine.codec)
HOP = 640


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(work: str) -> int:
    import torch

    torch.set_num_threads(1)
    with torch.inference_mode():
        if work.startswith("encodec"):
            from transformers import EncodecConfig, EncodecModel

            model = EncodecModel(EncodecConfig(
                sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                codebook_size=2048, normalize=False, use_causal_conv=False, norm_type="weight_norm",
                pad_mode="reflect", chunk_length_s=None, overlap=None, hidden_size=128, num_filters=64,
                num_lstm_layers=2, codebook_dim=128)).eval()  # facebook/encodec_32khz's layout
            codes = torch.randint(0, 2048, (1, 1, 4, CHUNK_FRAMES))
            wav = torch.randn(1, 1, CHUNK_FRAMES * HOP) * 0.1
            base = _peak()
            if work == "encodec-decode":
                model.decode(codes, audio_scales=[None])
            else:
                model.encode(wav)
        elif work == "t5":
            from transformers import T5Config, T5EncoderModel

            model = T5EncoderModel(T5Config(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12)).eval()
            ids = torch.randint(0, 32000, (1, 512))
            base = _peak()
            model(input_ids=ids)
        else:
            from fractions import Fraction

            from demucs.htdemucs import HTDemucs

            from musicgen_dev.separation import _PRESETS, SOURCES

            model = HTDemucs(sources=SOURCES, audio_channels=2, samplerate=44100, segment=Fraction(39, 5),
                             **_PRESETS["full"]).eval()
            mix = torch.randn(1, 2, int(7.8 * 44100)) * 0.1
            base = _peak()
            model(mix)
    return _peak() - base


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(measure(sys.argv[2]))
        return
    print("| work | peak working memory |")
    print("|---|---|")
    for work in WORKS:
        out = subprocess.run([sys.executable, __file__, "--one", work], capture_output=True, text=True, check=True)
        print(f"| {work} | {int(out.stdout.split()[-1]) / 1e9:.2f} GB |", flush=True)


if __name__ == "__main__":
    main()
