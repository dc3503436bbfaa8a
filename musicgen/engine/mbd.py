"""MultiBand Diffusion (MBD): audiocraft 1.3's higher-fidelity decoder of MusicGen's tokens, in plain torch.

Four diffusion U-Nets, one per frequency band, each conditioned on the codec's continuous latent (the
quantizer's embedding of the tokens), each denoising Gaussian noise through a subsampled DDPM chain (20 U-Net
passes by default); the bands are summed, then re-equalized so that 32 mel bands have the standard deviations
of the EnCodec decode of the same tokens. Equal to audiocraft's ``MultiBandDiffusion.tokens_to_wav`` (same noise
in, same audio out; ``tests/test_mbd.py`` against fixtures written by ``musicgen_dev/mbd_reference.py``).

Weights: the converted form of ``mbd_musicgen_32khz.th`` (``mbd.json``: per-band configs; ``mbd.safetensors``:
``{band}.model.*`` the U-Net's state, ``{band}.processor.*`` the sample processor's statistics). Noise comes from
the ``torch.Generator`` passed in, in audiocraft's order (per band: the initial noise, then one draw per chain
step but the last), so that on the CPU a generator seeded like ``torch.manual_seed`` gives audiocraft's audio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from musicgen.engine.codec import chunks
from musicgen.errors import MusicGenError

DEFAULT_STEPS = list(range(1000))[::-50] + [0]  # audiocraft's generate_subsampled default: 999, 949, ..., 49, 0
RE_EQ_BANDS = 32
# Long clips are decoded in chunks so that the U-Nets' activations (tens of channels per sample at full rate,
# GroupNorm'd over the whole input) stay those of one chunk however long the clip (audiocraft decodes the whole
# clip at once). 30 s is MusicGen's own window: every clip audiocraft's MusicGen makes in one window, and every
# clip up to 30 s here, is decoded whole, exactly as audiocraft does; only longer (extended) clips are chunked.
CHUNK_SECONDS = 30.0
# Each chunk's U-Net also sees this much of the clip on each side (the convolutions' reach, and GroupNorm
# statistics less tied to the chunk); neighbouring chunks' noise estimates are cross-faded linearly over the
# 2 s they share, so no seam is a cut. Sample-local stages (the band splits) are chunked exactly instead.
CONTEXT_SECONDS = 1.0
# float32 values per sample of the whole clip alive at once during a decode besides one chunk's work: the chain's
# state, its noise and the U-Nets' estimate (and its chunk-by-chunk sum), the bands' sum, the EnCodec reference
# and the output (an upper bound of what tests/test_mbd.py measures)
CLIP_FLOATS = 10
WORK_MARGIN = 1.25  # on the count of working memory: what it misses (small tensors, the allocator's rounding)


# --- band split (julius.SplitBands: a cascade of windowed-sinc low-pass filters, cut-offs even in mel) ---------

def mel_cutoffs(n_bands: int, sample_rate: float) -> list[torch.Tensor]:
    """The ``n_bands - 1`` cut-offs, as fractions of the sample rate, evenly spaced in mel (julius' arithmetic,
    float32, so that the filters are bit for bit julius')."""
    low = (2595 * torch.log10(1 + torch.tensor(0.0) / 700)).item()
    high = (2595 * torch.log10(1 + torch.tensor(float(sample_rate / 2)) / 700)).item()
    hz = 700 * (10 ** (torch.linspace(low, high, n_bands + 1) / 2595) - 1)
    return [c / sample_rate for c in hz[1:-1]]


def lowpass_filters(cutoffs: list[torch.Tensor], zeros: float = 8) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc low-pass filters (F, 1, 2 * half + 1), each summing to 1, and ``half``."""
    half = int(zeros / min(c for c in cutoffs if c > 0) / 2)
    window = torch.hann_window(2 * half + 1, periodic=False)
    time = torch.arange(-half, half + 1)
    filters = []
    for cutoff in cutoffs:
        x = 2 * cutoff * math.pi * time
        sinc = torch.where(x == 0, torch.tensor(1.0), torch.sin(x) / x)
        f = 2 * cutoff * window * sinc
        filters.append(f / f.sum())
    return torch.stack(filters)[:, None], half


def fft_conv1d(x: torch.Tensor, weight: torch.Tensor, block_ratio: float = 5) -> torch.Tensor:
    """``F.conv1d(x, weight)`` (x: (B, 1, L), weight: (D, 1, K)) by overlap-save FFTs in blocks of
    ``block_ratio * K`` samples: the cost of long filters grows with log K instead of K."""
    batch, _, length = x.shape
    out_channels, _, kernel = weight.shape
    block = min(int(kernel * block_ratio), length)
    hop, target = block - kernel + 1, length - kernel + 1
    frames_count = max(0, math.ceil((length - block) / hop)) + 1
    x = F.pad(x, (0, (frames_count - 1) * hop + block - length))
    frames = x[:, 0].unfold(-1, block, hop)  # (B, N, block)
    w = torch.fft.rfft(F.pad(weight[:, 0], (0, block - kernel)), dim=-1)  # (D, block // 2 + 1)
    out = torch.fft.irfft(torch.fft.rfft(frames, dim=-1)[:, None] * w.conj()[None, :, None], block, dim=-1)
    out = out[..., : hop].reshape(batch, out_channels, -1)
    return out[..., :target]


class BandSplit(nn.Module):
    """``x`` (..., T) -> (n_bands, ..., T) summing back to ``x``: julius ``SplitBands(sample_rate, n_bands)``."""

    def __init__(self, sample_rate: float, n_bands: int):
        super().__init__()
        self.n_bands = n_bands
        filters, self.half = lowpass_filters(mel_cutoffs(n_bands, sample_rate)) if n_bands > 1 else (None, 0)
        self.register_buffer("filters", filters, persistent=False)

    def floats(self, length: int) -> int:
        """The float32 values ``forward`` holds at once for ``length`` samples (the input and output included):
        the more of its FFT phase (each filter's blocks, real and complex, and the blocks' spectrum; a plain
        convolution for short filters) and of its band phase (the low-passes, the bands, their stack)."""
        if self.filters is None:
            return 2 * length
        padded, kernel, filters = length + 2 * self.half, 2 * self.half + 1, len(self.filters)
        if self.half <= 32:
            ffts = filters * padded
        else:
            block = min(int(kernel * 5), padded)
            blocks = max(0, math.ceil((padded - block) / (block - kernel + 1))) + 1
            ffts = (2 * filters + 1) * blocks * block
        return max(ffts, 3 * (filters + 1) * padded) + 2 * padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filters is None:
            return x[None]
        shape = x.shape
        flat = F.pad(x.reshape(-1, 1, shape[-1]), (self.half, self.half), mode="replicate")
        filters = self.filters.to(flat)
        lows = fft_conv1d(flat, filters) if self.half > 32 else F.conv1d(flat, filters)
        lows = lows.transpose(0, 1).reshape(-1, *shape)  # (F, ..., T)
        bands = [lows[0]] + [lows[i] - lows[i - 1] for i in range(1, len(lows))] + [x - lows[-1]]
        return torch.stack(bands)


# --- sample processor (audiocraft's MultiBandProcessor: per-band mean and scale fitted on the data) ----------

class SampleProcessor(nn.Module):
    """Maps audio to the space the diffusion runs in and back: each of ``n_bands`` mel bands shifted and scaled
    by the statistics in the weights (``counts``, ``sum_x``, ``sum_x2``, ``sum_target_x2``), to the power
    ``power_std``. Without statistics (processor not used in training) both ways are the identity."""

    def __init__(self, sample_rate: float, n_bands: int = 8, power_std: float = 1.0, used: bool = True):
        super().__init__()
        self.used, self.power_std = used, float(power_std)
        self.split = BandSplit(sample_rate, n_bands) if used else None
        for name in ("counts", "sum_x", "sum_x2", "sum_target_x2"):
            self.register_buffer(name, torch.zeros(1 if name == "counts" else n_bands) if used else None)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum_x / self.counts

    @property
    def std(self) -> torch.Tensor:
        return (self.sum_x2 / self.counts - self.mean**2).clamp(min=0).sqrt()

    @property
    def target_std(self) -> torch.Tensor:
        return self.sum_target_x2 / self.counts

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if not self.used:
            return x
        rescale = (self.target_std / self.std.clamp(min=1e-12)) ** self.power_std
        return ((self.split(x) - self.mean.view(-1, 1, 1, 1)) * rescale.view(-1, 1, 1, 1)).sum(dim=0)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        if not self.used:
            return x
        rescale = (self.std / self.target_std) ** self.power_std
        return (self.split(x) * rescale.view(-1, 1, 1, 1) + self.mean.view(-1, 1, 1, 1)).sum(dim=0)


# --- the U-Net (audiocraft's DiffusionUnet without its transformer option; same parameter names) -------------

class _ResBlock(nn.Module):
    def __init__(self, channels: int, groups: int, dilation: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, 1, dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, 1, dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class _Encoder(nn.Module):
    def __init__(self, chin, chout, kernel, stride, groups, res_blocks):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)
        self.norm = nn.GroupNorm(groups, chout)
        self.res_blocks = nn.Sequential(*[_ResBlock(chout, groups, 2**i) for i in range(res_blocks)])

    def forward(self, x):
        x = F.pad(x, (0, (self.stride - x.shape[-1] % self.stride) % self.stride))
        return self.res_blocks(F.relu(self.norm(self.conv(x))))


class _Decoder(nn.Module):
    def __init__(self, chin, chout, kernel, stride, groups, res_blocks):
        super().__init__()
        self.res_blocks = nn.Sequential(*[_ResBlock(chin, groups, 2**i) for i in range(res_blocks)])
        self.norm = nn.GroupNorm(groups, chin)
        self.convtr = nn.ConvTranspose1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)

    def forward(self, x):
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


class _BLSTM(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=2, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.linear(self.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0)


UNET_KEYS = {"hidden", "depth", "growth", "max_channels", "emb_all_layers", "cross_attention", "bilstm",
             "transformer", "codec_dim", "kernel", "stride", "norm_groups", "res_blocks", "dropout"}


class UNet(nn.Module):
    """Predicts the noise in ``x`` (B, C, T) at chain ``step`` given the codec latent ``condition`` (B, D, F),
    injected at the bottleneck (nearest-neighbour resampled to its length)."""

    def __init__(self, chin: int = 1, hidden: int = 24, depth: int = 3, growth: float = 2.0,
                 max_channels: int = 10_000, num_steps: int = 1000, emb_all_layers: bool = False,
                 bilstm: bool = False, codec_dim: int | None = None, kernel: int = 4, stride: int = 2,
                 norm_groups: int = 4, res_blocks: int = 1, **_unused):
        super().__init__()
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.embedding = nn.Embedding(num_steps, hidden)
        self.embeddings = nn.ModuleList() if emb_all_layers else None
        layer = dict(kernel=kernel, stride=stride, groups=norm_groups, res_blocks=res_blocks)
        for d in range(depth):
            self.encoders.append(_Encoder(chin, hidden, **layer))
            self.decoders.insert(0, _Decoder(hidden, chin, **layer))
            if emb_all_layers and d > 0:
                self.embeddings.append(nn.Embedding(num_steps, hidden))
            chin, hidden = hidden, min(int(hidden * growth), max_channels)
        self.bilstm = _BLSTM(chin) if bilstm else None
        self.conv_codec = nn.Conv1d(codec_dim, chin, 1) if codec_dim is not None else None
        self.total_stride = stride**depth  # input samples per bottleneck step

    def floats_per_sample(self) -> float:
        """An upper bound of the float32 values a forward pass holds at once, per input sample (batch 1): every
        level's skip, six tensors of the largest level (a residual block's input, temporaries and the
        decoder's skip sum) and the input and output (checked in tests/test_mbd.py)."""
        levels = [enc.norm.num_channels / enc.stride ** (d + 1) for d, enc in enumerate(self.encoders)]
        return sum(levels) + 6 * max(levels) + 2

    def forward(self, x: torch.Tensor, step: int, condition: torch.Tensor | None = None) -> torch.Tensor:
        steps = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        skips, z = [], x
        for idx, encoder in enumerate(self.encoders):
            z = encoder(z)
            if idx == 0:
                z = z + self.embedding(steps)[..., None]
            elif self.embeddings is not None:
                z = z + self.embeddings[idx - 1](steps)[..., None]
            skips.append(z)
        if self.conv_codec is not None:  # audiocraft adds it in place: the deepest skip gets it too
            z = z + F.interpolate(self.conv_codec(condition), z.shape[-1])
            skips[-1] = z
        z = torch.zeros_like(z) if self.bilstm is None else self.bilstm(z)
        for decoder in self.decoders:
            s = skips.pop()
            z = decoder(z[..., : s.shape[-1]] + s)
        return z[..., : x.shape[-1]]


# --- the noise schedule and its subsampled reverse chain -----------------------------------------------------

class Schedule:
    """audiocraft's ``NoiseSchedule`` ("power" repartition) and its ``generate_subsampled`` reverse process."""

    def __init__(self, beta_t0: float = 1e-4, beta_t1: float = 0.02, num_steps: int = 1000, clip: float = 5.0,
                 rescale: float = 1.0, beta_exp: float = 1, noise_scale: float = 1.0,
                 repartition: str = "power", n_bands: int | None = None, **_unused):
        if repartition != "power" or n_bands is not None:
            raise MusicGenError(f"The MBD weights use a noise schedule this decoder does not implement "
                                f"(repartition={repartition!r}, n_bands={n_bands!r}); convert the published "
                                f"mbd_musicgen_32khz.th with `python -m musicgen.hub --mbd`.")
        self.num_steps, self.clip, self.rescale, self.noise_scale = num_steps, clip, rescale, noise_scale
        self.betas = torch.linspace(beta_t0 ** (1 / beta_exp), beta_t1 ** (1 / beta_exp), num_steps,
                                    dtype=torch.float) ** beta_exp
        self.alpha_bars = (1 - self.betas).cumprod(dim=0)

    def alpha_bar(self, step: int) -> torch.Tensor:
        return (1 - self.betas[: step + 1]).prod()  # as audiocraft computes it (a product, not the cumprod)

    def coefficients(self, steps: list[int]) -> list[tuple[int, float, float, float]]:
        """Per pass of the chain over ``steps``: (step, 1 - alpha, alpha_bar, sigma), the last pass noiseless."""
        subsampled = self.alpha_bars[list(reversed(steps))]
        betas = 1 - torch.cat([subsampled[:1], subsampled[1:] / subsampled[:-1]])
        out, alpha_bar = [], self.alpha_bar(self.num_steps - 1)
        for idx, step in enumerate(steps[:-1]):
            alpha = 1 - betas[-1 - idx]
            if idx == len(steps) - 2:
                previous, sigma = torch.tensor(1.0), torch.tensor(0.0)
            else:
                previous = self.alpha_bar(steps[idx + 1])
                sigma = ((1 - previous) / (1 - alpha_bar) * (1 - alpha)).sqrt()
            out.append((step, alpha, alpha_bar, sigma))
            alpha_bar = previous
        return out

    def step(self, current: torch.Tensor, estimate: torch.Tensor, alpha, alpha_bar, sigma,
             noise: torch.Tensor | None) -> torch.Tensor:
        """One reverse step from the model's noise ``estimate`` (already times ``noise_scale``)."""
        previous = (current - (1 - alpha) / (1 - alpha_bar).sqrt() * estimate) / alpha.sqrt()
        if noise is not None:
            previous = previous + sigma * noise * self.noise_scale
        return previous.clamp(-self.clip, self.clip) if self.clip else previous

    def run(self, model, initial: torch.Tensor, condition: torch.Tensor, generator: torch.Generator,
            steps: list[int] | None = None) -> torch.Tensor:
        """The chain from ``initial`` noise, in the diffusion space (before the sample processor). ``model``: a
        :class:`UNet`, or anything called like one (the decoder's U-Net in chunks); the noise is drawn over the
        whole of ``initial`` either way, in audiocraft's order."""
        current = initial * self.noise_scale
        for step, alpha, alpha_bar, sigma in self.coefficients(steps or DEFAULT_STEPS):
            estimate = model(current, step, condition) * self.noise_scale
            noise = None
            if sigma > 0:
                noise = torch.randn(current.shape, generator=generator, device=current.device, dtype=current.dtype)
            current = self.step(current, estimate, alpha, alpha_bar, sigma, noise)
        return current


# --- the decoder ----------------------------------------------------------------------------------------------

class Band:
    """One band's diffusion: its U-Net, schedule and sample processor."""

    def __init__(self, config: dict, sample_rate: int):
        unknown = set(config["diffusion_unet"]) - UNET_KEYS
        if config["diffusion_unet"].get("transformer") or unknown:
            raise MusicGenError(f"The MBD weights need a U-Net option this decoder does not implement "
                                f"({sorted(unknown) or 'transformer'}); use MUSICGEN_DECODER=encodec.")
        self.unet = UNet(chin=config["channels"], num_steps=config["schedule"]["num_steps"],
                         **config["diffusion_unet"]).eval()
        self.schedule = Schedule(**config["schedule"])
        proc = config.get("processor", {})
        used = bool(proc.get("use")) and proc.get("name") == "multi_band_processor"
        self.processor = SampleProcessor(sample_rate, proc.get("n_bands", 8), proc.get("power_std", 1.0), used)

    def to(self, device) -> Band:
        self.unet.to(device)
        self.processor.to(device)
        return self


class MultiBandDiffusion:
    """The decoder: ``decode(latent, encodec_wav, generator)`` -> audio, as audiocraft's ``tokens_to_wav``.

    A clip longer than ``chunk_frames`` (``CHUNK_SECONDS``) is decoded in chunks (:meth:`spans`): the chain
    runs over the whole clip (its state, noise and steps are one channel of audio), only the U-Nets see one
    chunk at a time, and the band splits (sample processor, re-EQ) go chunk by chunk with their filters'
    reach; re-EQ's band statistics stay those of the whole clip."""

    def __init__(self, configs: list[dict], sample_rate: int, frame_rate: int = 50):
        self.bands = [Band(c, sample_rate) for c in configs]
        self.sample_rate, self.frame_rate = sample_rate, frame_rate
        self.hop = sample_rate // frame_rate  # audio samples per codec frame
        self.re_eq_split = BandSplit(sample_rate, RE_EQ_BANDS)
        self.chunk_frames = round(CHUNK_SECONDS * frame_rate)
        self.context_frames = round(CONTEXT_SECONDS * frame_rate)
        # chunks start on frames where every U-Net's strided grid lines up with the whole clip's
        stride = math.lcm(*(band.unet.total_stride for band in self.bands))
        self.align_frames = math.lcm(self.hop, stride) // self.hop

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> MultiBandDiffusion:
        """From a folder holding ``mbd.json`` and ``mbd.safetensors`` (``python -m musicgen.hub --mbd``)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "mbd.json").read_text())
        model = cls(meta["bands"], meta["sample_rate"], meta.get("frame_rate", 50))
        tensors = load_file(str(folder / "mbd.safetensors"))
        for i, band in enumerate(model.bands):
            band.unet.load_state_dict({k[len(f"{i}.model."):]: v for k, v in tensors.items()
                                       if k.startswith(f"{i}.model.")})
            if band.processor.used:
                for name in ("counts", "sum_x", "sum_x2", "sum_target_x2"):
                    getattr(band.processor, name).copy_(tensors[f"{i}.processor.{name}"])
            band.to(device)
        model.re_eq_split.to(device)
        return model

    def spans(self, samples: int) -> list[tuple[int, int, int, int]]:
        """The chunks a clip of ``samples`` is decoded in: (start, stop, lo, hi) sample ranges, chunk
        [start, stop) seen by the U-Nets with its context [lo, hi). One span, the whole clip, when it fits in
        ``chunk_frames``; else ``musicgen.engine.codec.chunks`` over blocks of ``align_frames`` frames, the
        chunks of even length and the context at most half of one (so only neighbours overlap)."""
        block = self.align_frames * self.hop
        blocks, chunk = -(-samples // block), max(1, self.chunk_frames // self.align_frames)
        if blocks <= chunk:
            return [(0, samples, 0, samples)]
        even = -(-blocks // -(-blocks // chunk))
        context = min(-(-self.context_frames // self.align_frames), even // 2)
        return [(start * block, min(samples, stop * block), lo * block, min(samples, hi * block))
                for start, stop, lo, hi in chunks(blocks, even, context)]

    def working_bytes(self, samples: int) -> int:
        """An upper bound of the memory (bytes) one :meth:`decode` of a ``samples`` long clip (one channel)
        works in, beside the weights: the larger of the U-Nets' (one chunk with its context) and the band
        splits' (one chunk with its filters' reach; re-EQ also holds the reference's bands, or the last
        piece's), plus ``CLIP_FLOATS`` per sample of the clip, times ``WORK_MARGIN``. Bounded by the chunk
        length but for that last term; the memory plan (``musicgen.serving.memory``) budgets it per request."""
        spans = self.spans(samples)
        seen = max(hi - lo for _, _, lo, hi in spans)
        chunk = max(stop - start for start, stop, _, _ in spans)
        splits = [band.processor.split for band in self.bands if band.processor.used]
        piece = chunk + 2 * self.re_eq_split.half
        re_eq = self.re_eq_split.floats(piece) + RE_EQ_BANDS * piece  # and the bands of ref or of the last piece
        work = max([max(band.unet.floats_per_sample() for band in self.bands) * seen, re_eq]
                   + [split.floats(chunk + 2 * split.half) for split in splits])
        return int(WORK_MARGIN * 4 * (work + CLIP_FLOATS * samples))

    def _unet_in_chunks(self, unet: UNet, spans: list[tuple[int, int, int, int]]):
        """``unet`` as the chain calls it, run chunk by chunk over ``spans``: the estimates of two neighbouring
        chunks are cross-faded linearly over the samples both saw (the weights sum to 1 everywhere)."""

        def forward(x: torch.Tensor, step: int, condition: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(x)
            for k, (_, _, lo, hi) in enumerate(spans):
                piece = unet(x[..., lo:hi], step, condition[..., lo // self.hop : -(-hi // self.hop)])
                weight = torch.ones(hi - lo, device=x.device, dtype=x.dtype)
                if k > 0:  # fade in over what the previous chunk also saw
                    shared = spans[k - 1][3] - lo
                    weight[:shared] *= _ramp(shared, weight)
                if k + 1 < len(spans):  # fade out over what the next chunk also sees
                    shared = hi - spans[k + 1][2]
                    weight[hi - lo - shared :] *= 1 - _ramp(shared, weight)
                out[..., lo:hi] += piece * weight
            return out

        return forward

    @staticmethod
    def _pieces(fn, x: torch.Tensor, spans: list[tuple[int, int, int, int]], reach: int):
        """(start, stop, ``fn``(x)[..., start:stop]) chunk by chunk, for an ``fn`` whose output at a sample
        depends on the input within ``reach`` samples (a band split's filters): each chunk computed with
        ``reach`` samples of ``x`` on each side, then cropped, so the pieces are ``fn(x)``'s."""
        if len(spans) == 1:
            yield 0, x.shape[-1], fn(x)
            return
        for start, stop, _, _ in spans:
            lo, hi = max(0, start - reach), min(x.shape[-1], stop + reach)
            yield start, stop, fn(x[..., lo:hi])[..., start - lo : stop - lo]

    @torch.inference_mode()
    def generate(self, latent: torch.Tensor, samples: int, generator: torch.Generator,
                 steps: list[int] | None = None) -> torch.Tensor:
        """The bands' diffusions from ``latent`` (B, D, frames), summed: (B, 1, samples)."""
        shape = (latent.shape[0], 1, samples)
        spans = self.spans(samples)
        out = torch.zeros(shape, device=latent.device, dtype=latent.dtype)
        for band in self.bands:
            noise = torch.randn(shape, generator=generator, device=latent.device, dtype=latent.dtype)
            unet = band.unet if len(spans) == 1 else self._unet_in_chunks(band.unet, spans)
            diffused = band.schedule.run(unet, noise, latent, generator, steps)
            reach = band.processor.split.half if band.processor.used else 0
            for start, stop, piece in self._pieces(band.processor.restore, diffused, spans, reach):
                out[..., start:stop] += piece
        return out

    @torch.inference_mode()
    def re_eq(self, wav: torch.Tensor, ref: torch.Tensor, strictness: float = 1.0) -> torch.Tensor:
        """``wav`` with each of 32 mel bands scaled to the standard deviation of that band of ``ref``, the
        standard deviations over the whole clip (computed chunk by chunk for a clip of several chunks)."""
        spans = self.spans(ref.shape[-1])
        if len(spans) == 1:  # audiocraft's own computation, the bands of ``wav`` split once
            bands, bands_ref = self.re_eq_split(wav), self.re_eq_split(ref)
            scale = [(band_ref.std() / band.std()) ** strictness for band, band_ref in zip(bands, bands_ref)]
            pieces = [(0, ref.shape[-1], bands)]
        else:
            def stds(x: torch.Tensor) -> torch.Tensor:  # each band's over the clip, from float64 sums
                count, total = 0, torch.zeros(RE_EQ_BANDS, dtype=torch.float64)
                squares = torch.zeros_like(total)
                for _, _, bands in self._pieces(self.re_eq_split, x, spans, self.re_eq_split.half):
                    count += bands[0].numel()
                    for index, band in enumerate(bands):  # one band in float64 at a time
                        band = band.double()
                        total[index] += band.sum().cpu()
                        squares[index] += band.square().sum().cpu()
                return ((squares - total**2 / count) / (count - 1)).clamp(min=0).sqrt()

            scale = ((stds(ref) / stds(wav)) ** strictness).tolist()
            pieces = self._pieces(self.re_eq_split, wav, spans, self.re_eq_split.half)  # split again, chunk by chunk
        out = torch.zeros_like(ref)
        for start, stop, bands in pieces:
            for band, factor in zip(bands, scale):
                out[..., start:stop] += band * factor
        return out

    def decode_codes(self, quantizer, codes: torch.Tensor, encodec_wav: torch.Tensor,
                     generator: torch.Generator, steps: list[int] | None = None) -> torch.Tensor:
        """Codes (K, frames) -> audio (channels, samples) like ``encodec_wav`` (the EnCodec decode of the same
        codes, float32 on the CPU): a stereo checkpoint's interleaved codebooks (L0 R0 L1 R1 ...) are decoded
        channel by channel, the left then the right, each against its own EnCodec channel. ``steps``: the
        diffusion steps (default audiocraft's ``DEFAULT_STEPS``)."""
        channels = encodec_wav.shape[0]
        device = self.re_eq_split.filters.device
        out = []
        for c in range(channels):
            own = codes[c::channels] if channels > 1 else codes
            latent = codec_latent(quantizer, own[None].to(quantizer.layers[0].codebook.embed.device))
            ref = encodec_wav[c][None, None].to(device)
            out.append(self.decode(latent.to(device, torch.float32), ref, generator, steps)[0, 0])
        return torch.stack(out).float().cpu()

    def decode(self, latent: torch.Tensor, encodec_wav: torch.Tensor, generator: torch.Generator,
               steps: list[int] | None = None) -> torch.Tensor:
        """Audio (B, 1, samples) for the codec ``latent`` (B, D, frames), equalized like ``encodec_wav``."""
        return self.re_eq(self.generate(latent, encodec_wav.shape[-1], generator, steps), encodec_wav)


def _ramp(length: int, like: torch.Tensor) -> torch.Tensor:
    """``length`` weights rising linearly from 0 to 1 (exclusive), whose mirror ``1 - ramp`` fades out."""
    return (torch.arange(length, device=like.device, dtype=like.dtype) + 0.5) / length


def codec_latent(quantizer, codes: torch.Tensor) -> torch.Tensor:
    """The continuous latent (B, D, frames) of ``codes`` (B, K, frames): the sum of the codebook embeddings,
    transformers' ``EncodecResidualVectorQuantizer.decode`` (audiocraft's ``decode_latent``)."""
    return quantizer.decode(codes.transpose(0, 1))
