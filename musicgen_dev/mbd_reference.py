"""Reference fixtures for the MultiBand Diffusion decoder (``musicgen/engine/mbd.py``), computed by audiocraft
1.3.0's own code on tiny random weights in audiocraft's checkpoint format.

The tests (``tests/test_mbd.py``) never import or download audiocraft: they compare our decoder with what this
script wrote into ``tests/data/mbd/``:

- ``mbd_tiny.th`` — a tiny random-weight MBD checkpoint in the format of ``mbd_musicgen_32khz.th`` (a torch
  pickle: ``sample_rate``, ``n_bands`` and, per band ``i``, ``{'cfg': DictConfig, 'model_state': ...,
  'processor_state': ...}``), as audiocraft's ``load_diffusion_models`` reads it;
- ``mbd.safetensors`` + ``mbd.json`` — the same weights and configs in the converted form our decoder loads;
- ``reference.safetensors`` — inputs, fixed noise and audiocraft's outputs for each part separately (the U-Net
  forward, one step of the subsampled DDPM chain, the sample processor both ways, julius' band split for 8 and
  32 bands, re-EQ) and for a whole decode (``MultiBandDiffusion.tokens_to_wav``) from a fixed latent, EnCodec
  reference and seed, and the codec latent (``decode_latent``) of fixed codes through audiocraft's quantizer.

audiocraft 1.3 cannot be installed next to this project's torch (it pins torch 2.1, and torchaudio does not load
with ours), so the script imports only the modules MBD needs from a folder where audiocraft is unpacked without
its dependencies, and stands in empty modules for the unrelated package ``__init__`` files. To regenerate::

    pip install --no-deps --target /tmp/ac audiocraft==1.3.0 julius==0.2.8 omegaconf==2.4.0 \\
        antlr4-python3-runtime==4.9.3 einops==0.8.2
    python -m musicgen_dev.mbd_reference /tmp/ac            # writes tests/data/mbd/

Everything is float32 on the CPU, seeded, so a rerun writes the same numbers.
"""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mbd"
SAMPLE_RATE, FRAME_RATE = 32000, 50
HOP = SAMPLE_RATE // FRAME_RATE
CODEC_DIM, FRAMES, SEED = 16, 3, 1234
N_BANDS = 4


def band_config(band: int) -> dict:
    """The per-band config, with the keys of the published ``mbd_musicgen_32khz.th`` (tiny sizes)."""
    return {
        "channels": 1,
        "schedule": {
            "repartition": "power", "beta_exp": 7.5, "beta_t0": 1.0e-5, "beta_t1": 2.9e-2, "num_steps": 1000,
            "variance": "beta_tilde", "clip": 5.0, "rescale": 1.0, "n_bands": None, "noise_scale": 1.0,
        },
        "diffusion_unet": {
            "hidden": 2, "depth": 2, "res_blocks": 1, "norm_groups": 1, "kernel": 8, "stride": 4, "growth": 2,
            "max_channels": 10000, "dropout": 0.0, "emb_all_layers": band % 2 == 0, "bilstm": band == 3,
            "codec_dim": CODEC_DIM, "transformer": False, "cross_attention": False,
        },
        "processor": {
            "use": band != 1, "name": "multi_band_processor", "n_bands": 8, "num_samples": 10000,
            "power_std": 1.0 if band == 0 else 0.75,  # a float: audiocraft cannot raise to a ListConfig
        },
    }


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def _functions_from(path: Path, names: set[str], namespace: dict) -> None:
    """Define the named top-level functions of ``path`` (audiocraft's own source) in ``namespace``."""
    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    exec(compile(tree, str(path), "exec"), namespace)


def import_audiocraft(root: Path):
    """audiocraft's MBD modules from ``root`` (where audiocraft, julius and omegaconf are unpacked), without its
    package ``__init__`` files (they import torchaudio, xformers, transformers' T5 ...)."""
    sys.path.insert(0, str(root))
    pkg = root / "audiocraft"
    ac = _package("audiocraft", pkg)
    ac.__version__ = "1.3.0"
    _package("audiocraft.models", pkg / "models")
    _package("audiocraft.modules", pkg / "modules")
    _package("audiocraft.solvers", pkg / "solvers")
    transformer = _package("audiocraft.modules.transformer")  # only for the transformer U-Net (unused by MBD)
    transformer.StreamingTransformer = transformer.create_sin_embedding = None
    encodec = _package("audiocraft.models.encodec")
    encodec.CompressionModel = torch.nn.Module
    compression = _package("audiocraft.solvers.compression")
    compression.CompressionSolver = None
    if "flashy" not in sys.modules:  # only its distributed helpers, for training the quantizer
        try:
            import flashy  # noqa: F401
        except ImportError:
            _package("flashy").distrib = None

    import omegaconf
    from audiocraft.models.unet import DiffusionUnet
    from audiocraft.modules import diffusion_schedule

    builders = _package("audiocraft.models.builders")
    builders.DiffusionUnet, builders.omegaconf = DiffusionUnet, omegaconf
    builders.SampleProcessor = diffusion_schedule.SampleProcessor
    builders.MultiBandProcessor = diffusion_schedule.MultiBandProcessor
    _functions_from(pkg / "models" / "builders.py", {"get_diffusion_model", "get_processor"}, builders.__dict__)

    from audiocraft.models import loaders, multibanddiffusion
    return loaders, multibanddiffusion, diffusion_schedule


class _Codec(torch.nn.Module):
    """What ``MultiBandDiffusion`` asks of its codec: its rate and the EnCodec decode and latent of the tokens,
    here fixed tensors (the latent part is checked separately against audiocraft's quantizer)."""

    def __init__(self, emb: torch.Tensor, ref: torch.Tensor):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.emb, self.ref = emb, ref
        self.sample_rate, self.frame_rate, self.channels = SAMPLE_RATE, FRAME_RATE, 1

    def decode(self, tokens):
        return self.ref

    def decode_latent(self, tokens):
        return self.emb


def build_checkpoint(path: Path) -> dict:
    """A random-weight ``mbd_*.th`` built with audiocraft's constructors; returns its package."""
    from omegaconf import OmegaConf
    from audiocraft.models import builders

    pkg: dict = {"sample_rate": SAMPLE_RATE, "n_bands": N_BANDS}
    for band in range(N_BANDS):
        torch.manual_seed(100 + band)
        cfg = OmegaConf.create(band_config(band))
        model = builders.get_diffusion_model(cfg)
        with torch.no_grad():  # GroupNorm starts at (1, 0): move it, so that a swapped weight would show
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        processor = builders.get_processor(cfg=cfg.processor, sample_rate=SAMPLE_RATE)
        state = processor.state_dict()
        if state:  # statistics as if fitted on 10 000 samples: no further update
            state["counts"] = torch.tensor([10000.0])
            state["sum_x"] = 0.01 * torch.randn(8) * 10000
            mean = state["sum_x"] / 10000
            state["sum_x2"] = (mean**2 + torch.rand(8) * 0.2 + 0.01) * 10000
            state["sum_target_x2"] = (torch.rand(8) * 0.5 + 0.5) * 10000
        pkg[band] = {"cfg": cfg, "model_state": model.state_dict(), "processor_state": state}
    torch.save(pkg, path)
    return pkg


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m musicgen_dev.mbd_reference AUDIOCRAFT_FOLDER")
    root = Path(argv[0]).resolve()
    loaders, mbd, schedule_module = import_audiocraft(root)
    import julius
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    load = torch.load  # audiocraft 1.3 loads its pickles with torch 2.1's default (full unpickling)
    loaders.torch.load = lambda *a, **k: load(*a, **{**k, "weights_only": False})

    OUT.mkdir(parents=True, exist_ok=True)
    pkg = build_checkpoint(OUT / "mbd_tiny.th")
    models, processors, cfgs = loaders.load_diffusion_models(str(OUT / "mbd_tiny.th"), device="cpu")
    for model in models:
        model.eval()

    # the converted form our decoder loads
    weights, configs = {}, []
    for band in range(N_BANDS):
        weights.update({f"{band}.model.{k}": v.contiguous() for k, v in pkg[band]["model_state"].items()})
        weights.update({f"{band}.processor.{k}": v.contiguous() for k, v in pkg[band]["processor_state"].items()})
        configs.append(OmegaConf.to_container(pkg[band]["cfg"]))
    save_file(weights, str(OUT / "mbd.safetensors"))
    (OUT / "mbd.json").write_text(json.dumps({"sample_rate": SAMPLE_RATE, "n_bands": N_BANDS, "bands": configs},
                                             indent=1) + "\n")

    gen = torch.Generator().manual_seed(SEED)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    ref: dict[str, torch.Tensor] = {}
    samples = FRAMES * HOP
    with torch.no_grad():
        # U-Net forward, every band (with and without the per-layer step embeddings, the BLSTM)
        ref["unet.x"], ref["unet.condition"] = r(2, 1, samples - 37), r(2, CODEC_DIM, FRAMES)
        for band in range(N_BANDS):
            ref[f"unet.{band}.out"] = models[band](ref["unet.x"], 517, condition=ref["unet.condition"]).sample

        # sample processor, both ways (band 1 has none: identity)
        ref["processor.x"] = r(1, 1, samples)
        for band in (0, 2):
            ref[f"processor.{band}.project"] = processors[band].project_sample(ref["processor.x"])
            ref[f"processor.{band}.return"] = processors[band].return_sample(ref["processor.x"])

        # one chain step (with noise) and a two-step chain through the processor, band 0
        schedules = [schedule_module.NoiseSchedule(**cfgs[b].schedule, sample_processor=processors[b], device="cpu")
                     for b in range(N_BANDS)]
        ref["chain.initial"], ref["chain.condition"] = r(1, 1, samples), r(1, CODEC_DIM, FRAMES)
        torch.manual_seed(SEED)
        states = schedules[0].generate_subsampled(models[0], ref["chain.initial"], step_list=[999, 949, 0],
                                                  condition=ref["chain.condition"], return_list=True)
        ref["chain.step1"], ref["chain.step2"] = states[1], states[2]
        torch.manual_seed(SEED)
        ref["chain.out"] = schedules[0].generate_subsampled(models[0], ref["chain.initial"], step_list=[999, 949, 0],
                                                            condition=ref["chain.condition"])

        # julius' band split (8 bands as the processor, 32 as re-EQ)
        ref["split.x"] = r(1, 1, 600)
        ref["split.8"] = julius.SplitBands(n_bands=8, sample_rate=SAMPLE_RATE)(ref["split.x"])
        ref["split.32"] = julius.SplitBands(n_bands=32, sample_rate=SAMPLE_RATE)(ref["split.x"])

        # the whole decode: tokens_to_wav with a fixed latent and EnCodec reference, default steps
        ref["decode.emb"], ref["decode.encodec"] = r(1, CODEC_DIM, FRAMES), 0.3 * r(1, 1, samples)
        dps = [mbd.DiffusionProcess(model=models[b], noise_schedule=schedules[b]) for b in range(N_BANDS)]
        mbd_model = mbd.MultiBandDiffusion(DPs=dps, codec_model=_Codec(ref["decode.emb"], ref["decode.encodec"]))
        torch.manual_seed(SEED)
        ref["decode.bands_sum"] = mbd_model.generate(ref["decode.emb"], size=ref["decode.encodec"].shape)
        torch.manual_seed(SEED)
        ref["decode.out"] = mbd_model.tokens_to_wav(torch.zeros(1, 2, FRAMES, dtype=torch.long))

        # re-EQ alone
        ref["re_eq.wav"], ref["re_eq.ref"] = r(1, 1, samples), 0.5 * r(1, 1, samples)
        ref["re_eq.out"] = mbd_model.re_eq(ref["re_eq.wav"], ref["re_eq.ref"])

        # decode_latent through audiocraft's residual vector quantizer
        from audiocraft.quantization.vq import ResidualVectorQuantizer
        rvq = ResidualVectorQuantizer(dimension=CODEC_DIM, n_q=2, bins=32)
        for layer in rvq.vq.layers:
            layer._codebook.embed.copy_(r(32, CODEC_DIM))
            layer._codebook.inited.fill_(1)
        ref["latent.codebooks"] = torch.stack([layer._codebook.embed for layer in rvq.vq.layers])
        ref["latent.codes"] = torch.randint(0, 32, (1, 2, FRAMES), generator=gen)
        ref["latent.out"] = rvq.decode(ref["latent.codes"])

    save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / "reference.safetensors"),
              metadata={"seed": str(SEED), "audiocraft": "1.3.0", "julius": "0.2.8"})
    sizes = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({sizes // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
