"""The served configuration, measured as the image runs it: setup, concurrent requests, and one long request end to end.

The deployment's settings come from cog.yaml (its ``environment`` and ``concurrency.max``, as the image bakes them
in; variables already set win, so ``MUSICGEN_DEVICE=cpu`` runs the same code on a CPU), and the model is loaded by
``MusicGen.load`` exactly as ``predict.py``'s setup loads it: default precision, the step (compiled and recorded as
CUDA graphs on a GPU) and the memory plan's slots. The checkpoint has random weights with real shapes (``--preset
medium --melody`` is musicgen-melody's); requests are text prompts (CFG 3, top-k 250) without melody audio (the null
melody's 235 chroma positions still lead every prefix; stem separation is off: it is request-side work, not decoding).

Printed, one ``key=value`` per line as each figure is known (``bench/gpu_check.py`` collects them):

- setup: ``load_s``, ``warm_up_s`` (every step shape's first run: compilation, when compiled), ``capture_s`` (CUDA
  graphs), ``compiled`` / ``graphs`` / ``fallbacks`` (whether the step really ran compiled and replayed graphs),
  ``per_row`` (whether each row read only its own keys: musicgen/engine/row_attention.py), ``sampling_in_step``
  (whether the recorded step sampled every request itself);
- per client count N: ``cN.audio_s_per_s``, ``cN.p50_s`` / ``cN.p95_s`` (latency), ``cN.steps_per_s`` (shared decode
  steps per second: each request in flight advances one column a step), ``cN.gb_per_s`` and ``cN.roofline`` (the
  bytes the run had to read over its wall time, and that against the measured copy bandwidth: musicgen_dev/roofline.py);
- ``e2e_s``: one request of ``--e2e-seconds`` of music, request to WAV file;
- ``peak_gpu_gib`` of each part, on a GPU.

    python bench/served.py [--preset medium] [--melody] [--seconds 10] [--clients 1 4 8] [--e2e-seconds 30]
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicgen_dev import bench  # noqa: E402

PROMPT = "lofi hip hop beat with mellow piano and soft drums"


def image_environment(cog_yaml: Path = ROOT / "cog.yaml") -> dict[str, str]:
    """The variables the image runs with: cog.yaml's ``environment`` and its ``concurrency.max`` (Cog bakes it in
    as COG_MAX_CONCURRENCY)."""
    config = yaml.safe_load(cog_yaml.read_text())
    env = dict(item.split("=", 1) for item in config.get("environment") or [])
    if (config.get("concurrency") or {}).get("max"):
        env["COG_MAX_CONCURRENCY"] = str(config["concurrency"]["max"])
    return env


def say(key: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{key}={value}", flush=True)


class Peak:
    """Peak GPU memory of a part (nothing on a CPU)."""

    def __init__(self, torch, device, name: str):
        self.torch, self.device, self.name = torch, device, name

    def __enter__(self):
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        cuda = self.device.type == "cuda"
        say(f"{self.name}.peak_gpu_gib", self.torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else "na")


def main() -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--preset", default="medium", choices=["tiny", "small", "medium"])
    parser.add_argument("--melody", action="store_true", help="melody checkpoint layout (the default checkpoint)")
    parser.add_argument("--seconds", type=int, default=10, help="music per request in the concurrent runs")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--e2e-seconds", type=int, default=30, help="music of the end-to-end request (0: skip)")
    args = parser.parse_args()

    for key, value in image_environment().items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MUSICGEN_MELODY_STEMS", "0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from musicgen import GenerationRequest, MusicGen
    from musicgen.settings import Settings
    from musicgen_dev import roofline
    from musicgen_dev.checkpoints import build_random_checkpoint

    settings = Settings.from_env()
    device = settings.torch_device()
    say("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    say("settings", ",".join(f"{k}={os.environ[k]}" for k in sorted(os.environ)
                             if k.startswith(("MUSICGEN_", "COG_MAX"))))
    work = bench.work_dir("served-")
    started = time.perf_counter()
    checkpoint = build_random_checkpoint(work / "checkpoint", melody=args.melody, preset=args.preset)
    say("build_checkpoint_s", time.perf_counter() - started)
    bandwidth = roofline.copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 26)
    say("copy_gb_per_s", bandwidth / 1e9)

    with Peak(torch, device, "setup"):
        started = time.perf_counter()
        model = MusicGen.load(checkpoint)
        setup = time.perf_counter() - started
    engine, scheduler = model.engine, model.scheduler
    graph = scheduler.graph
    timings = graph.timings if graph is not None else {}
    say("setup_s", setup)
    say("load_s", setup - sum(timings.values()))
    say("warm_up_s", timings.get("warm_up", 0.0))
    say("capture_s", timings.get("capture", 0.0))
    decoder = engine.backend.decoder
    say("precision", engine.precision)
    say("step", "fixed" if graph is not None else "segments")
    say("compiled", graph.compiled if graph is not None else decoder.compiled)
    say("graphs", len(graph.graphs) if graph is not None else 0)
    say("shapes", len(graph.buckets()) if graph is not None else 0)
    say("fallbacks", len(graph.fallbacks) if graph is not None else 0)
    say("per_row", graph.per_row if graph is not None else False)
    say("sampling_in_step", graph.sampling if graph is not None else False)
    for reason in graph.fallbacks if graph is not None else []:
        print(f"fallback: {reason}", flush=True)
    say("slots", scheduler.slots)

    weight_bytes = sum(t.numel() * t.element_size() for t in decoder.weights())
    per_position = roofline.kv_bytes_per_position(len(decoder.layers), decoder.hidden,
                                                  decoder.state_dtype.itemsize)
    text_tokens = len(engine.conditioner.tokenizer(PROMPT).input_ids)
    config = engine.model.config
    prefix = (config.chroma_length + text_tokens) if engine.is_melody else 0
    cross = 0 if engine.is_melody else text_tokens
    say("weight_gb", weight_bytes / 1e9)
    say("kv_kb_per_position_row", per_position / 1e3)

    def request(seconds: int, seed: int, out: Path | None = None) -> tuple[float, int]:
        """(latency, decode steps: one per column of each window, the delay pattern's included)."""
        steps = sum(n + engine.max_delay for _, n in engine.plan(0, seconds * engine.frame_rate))
        begun = time.perf_counter()
        model.predict(GenerationRequest(prompt=PROMPT, duration=seconds, seed=seed), output_dir=out)
        return time.perf_counter() - begun, steps

    request(1, 0)  # first request: lazily built pieces (text encoder kernels, codec) outside the figures
    base = None
    for clients in [c for c in args.clients if c <= scheduler.slots] or [scheduler.slots]:
        latencies: list[float] = []
        steps_each: list[int] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            latency, steps = request(args.seconds, 100 * clients + index)
            with lock:
                latencies.append(latency)
                steps_each.append(steps)

        with Peak(torch, device, f"c{clients}"):
            first = scheduler.steps
            begun = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - begun
            shared = scheduler.steps - first
        audio = clients * args.seconds / wall
        base = base or audio
        read = roofline.run_bytes(weight_bytes, shared,
                                  [roofline.request_bytes(per_position, s, prefix, cross) for s in steps_each])
        say(f"c{clients}.audio_s_per_s", audio)
        say(f"c{clients}.vs_one_client", audio / base)
        say(f"c{clients}.p50_s", statistics.median(latencies))
        say(f"c{clients}.p95_s", sorted(latencies)[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))])
        say(f"c{clients}.steps_per_s", shared / wall)
        say(f"c{clients}.gb_per_s", read / wall / 1e9)
        say(f"c{clients}.roofline", roofline.fraction(read, wall, bandwidth))

    if args.e2e_seconds:
        out = work / "e2e"
        out.mkdir()
        with Peak(torch, device, "e2e"):
            latency, _ = request(args.e2e_seconds, 7, out)
        assert len(list(out.glob("*.wav"))) == 1, "the end-to-end request wrote no WAV file"
        say("e2e_s", latency)
        say("e2e_audio_s", args.e2e_seconds)
    model.scheduler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
