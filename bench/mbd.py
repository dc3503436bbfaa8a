"""MultiBand Diffusion against EnCodec decoding, and against audiocraft's own MBD code on the same weights.

For each clip length (``--seconds``), random codes of the 32 kHz codec (4 codebooks, 50 frames a second) are
decoded by EnCodec (random weights with the real 32 kHz shapes, ``musicgen.engine.codec.Codec``) and by our MBD
(``musicgen/engine/mbd.py``: EnCodec decode, 4 bands x 20 U-Net passes, band sum, re-EQ). Printed, one
``key=value`` per line: ``encodec.S.rtf`` / ``mbd.S.rtf`` (seconds of audio per second of wall time) and
``mbd.S.peak_mb`` (CUDA: the largest allocation during the decode; CPU: the process' peak resident memory).

The weights: ``--weights DIR`` (the converted published ones: ``python -m musicgen.hub --mbd``), else random
weights of the U-Net size given by ``--hidden``/``--depth``/``--growth``/``--kernel``/``--stride`` (codec latent
128; the defaults are a guess at the published model's size, not read from it: report figures from
``--weights`` when they are to be quoted).

With ``--audiocraft DIR`` (audiocraft 1.3 unpacked there, as ``musicgen_dev/mbd_reference.py`` says, CPU only),
audiocraft's ``MultiBandDiffusion.generate`` + ``re_eq`` run on the same weights, latent and seed in the same
process, alternating with ours run by run (``--repeat``: the fastest of each): ``audiocraft.S.rtf``,
``speedup.S`` (ours / audiocraft's rate, the EnCodec decode included in both), ``speedup_diffusion.S`` (the
same without it) and ``max_abs_diff.S``.

    .venv/bin/python bench/mbd.py [--seconds 8 30] [--device cpu|cuda] [--weights DIR] [--audiocraft DIR]
                                  [--repeat 1] [--codec small|tiny]
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicgen.engine.codec import Codec  # noqa: E402
from musicgen.engine.mbd import DEFAULT_STEPS, MultiBandDiffusion  # noqa: E402
from musicgen_dev import bench  # noqa: E402
from musicgen_dev.checkpoints import codec_config  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "mbd"


def say(key: str, value) -> None:
    print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}", flush=True)


def random_mbd(args, device, codec_dim: int = 128) -> tuple[MultiBandDiffusion, list[dict]]:
    """Random U-Nets of the asked size with the fixtures' schedule and processor statistics."""
    meta = json.loads((FIXTURES / "mbd.json").read_text())
    configs = []
    for band in meta["bands"]:
        unet = dict(band["diffusion_unet"], hidden=args.hidden, depth=args.depth, growth=args.growth,
                    kernel=args.kernel, stride=args.stride, norm_groups=4, codec_dim=codec_dim, bilstm=False,
                    emb_all_layers=True)
        configs.append(dict(band, diffusion_unet=unet, processor=dict(band["processor"], use=True)))
    torch.manual_seed(0)
    model = MultiBandDiffusion(configs, meta["sample_rate"])
    from safetensors.torch import load_file

    stats = load_file(str(FIXTURES / "mbd.safetensors"))
    for band in model.bands:
        for name in ("counts", "sum_x", "sum_x2", "sum_target_x2"):
            getattr(band.processor, name).copy_(stats[f"0.processor.{name}"])
        band.to(device)
    model.re_eq_split.to(device)
    return model, configs


def audiocraft_mbd(folder: str, model: MultiBandDiffusion, configs: list[dict]):
    """audiocraft's own MultiBandDiffusion over the same weights (its U-Net, schedule and processor classes)."""
    from musicgen_dev.mbd_reference import import_audiocraft

    _, mbd_module, schedule_module = import_audiocraft(Path(folder))
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    dps = []
    for band, config in zip(model.bands, configs):
        cfg = OmegaConf.create(config)
        unet = builders.get_diffusion_model(cfg).eval()
        unet.load_state_dict(band.unet.state_dict())
        processor = builders.get_processor(cfg.processor, sample_rate=model.sample_rate)
        processor.load_state_dict({**processor.state_dict(), **{n: getattr(band.processor, n) for n in
                                                                ("counts", "sum_x", "sum_x2", "sum_target_x2")}})
        schedule = schedule_module.NoiseSchedule(**cfg.schedule, sample_processor=processor, device="cpu")
        dps.append(mbd_module.DiffusionProcess(model=unet, noise_schedule=schedule))
    return mbd_module, dps


def timed(fn, device, repeat: int = 1) -> tuple[object, float]:
    """``fn()`` and its fastest wall time over ``repeat`` runs (a shared CPU's neighbours only add time)."""
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return out, best


def main() -> None:
    p = bench.parser(__doc__)
    p.add_argument("--seconds", type=float, nargs="+", default=[8, 30])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--weights", default=None)
    p.add_argument("--audiocraft", default=None)
    p.add_argument("--repeat", type=int, default=1, help="runs of each decode; the fastest is reported")
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--growth", type=float, default=2)
    p.add_argument("--kernel", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--passes", type=int, default=len(DEFAULT_STEPS) - 1,
                   help="U-Net passes per band (default audiocraft's 20; fewer only for the GPU check's smoke run)")
    p.add_argument("--codec", default="small", choices=("tiny", "small"),
                   help="EnCodec's widths: the real 32 kHz codec's (small) or narrower (tiny: the GPU check's smoke run)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    from transformers import EncodecModel

    torch.manual_seed(1)
    encodec = EncodecModel(codec_config(args.codec)).eval().to(device)
    for layer in encodec.quantizer.layers:
        layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))
    codec = Codec(encodec, channels=1, num_codebooks=4, chunk_frames=1500)
    if args.weights:
        mbd, configs = MultiBandDiffusion.load(args.weights, device), None
    else:
        mbd, configs = random_mbd(args, device, encodec.config.hidden_size)
    theirs_parts = None
    if args.audiocraft and device.type == "cpu" and configs is not None:
        theirs_parts = audiocraft_mbd(args.audiocraft, mbd, configs)
    say("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    say("mbd.parameters_m", sum(p.numel() for b in mbd.bands for p in b.unet.parameters()) / 1e6)
    steps = None if args.passes == len(DEFAULT_STEPS) - 1 else [round(999 * (1 - i / args.passes)) for i in
                                                                 range(args.passes)] + [0]
    if steps is not None and args.audiocraft:
        p.error("--audiocraft runs audiocraft's 20 passes per band: leave --passes out to compare with it")
    for seconds in args.seconds:
        tag = f"{seconds:g}"
        codes = torch.randint(0, 2048, (4, int(seconds * 50)))
        wav, t_enc = timed(lambda: codec.decode(codes), device, args.repeat)
        say(f"encodec.{tag}.rtf", seconds / t_enc)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def run_ours():
            return mbd.decode_codes(encodec.quantizer, codes, wav, torch.Generator(device).manual_seed(0), steps)

        def peak_mb() -> float:  # ours only: read before audiocraft's first run
            peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            return peak / 2**20

        run_theirs = None
        if theirs_parts is not None:
            mbd_module, dps = theirs_parts
            from musicgen_dev.mbd_reference import _Codec

            latent = encodec.quantizer.decode(codes[:, None]).float()
            ref = wav[None]
            theirs_model = mbd_module.MultiBandDiffusion(DPs=dps, codec_model=_Codec(latent, ref))

            def run_theirs():
                torch.manual_seed(0)
                return theirs_model.re_eq(theirs_model.generate(latent, size=ref.shape), ref)

        # with audiocraft, the two alternate run by run, so that a busy neighbour slows both alike
        t_mbd = t_ac = float("inf")
        for index in range(args.repeat):
            ours, t = timed(run_ours, device)
            t_mbd = min(t_mbd, t)
            if index == 0:
                peak = peak_mb()
            if run_theirs is not None:
                theirs, t = timed(run_theirs, device)
                t_ac = min(t_ac, t)
        say(f"mbd.{tag}.rtf", seconds / (t_enc + t_mbd))  # the EnCodec decode is part of MBD's (re-EQ reference)
        say(f"mbd.{tag}.peak_mb", peak)
        if run_theirs is not None:
            say(f"audiocraft.{tag}.rtf", seconds / (t_enc + t_ac))
            say(f"speedup.{tag}", (t_enc + t_ac) / (t_enc + t_mbd))
            say(f"speedup_diffusion.{tag}", t_ac / t_mbd)  # without the EnCodec decode both need
            say(f"max_abs_diff.{tag}", (theirs[0] - ours).abs().max().item())

if __name__ == "__main__":
    main()
