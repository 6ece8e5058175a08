"""StyleGAN2 ``G_ema`` (mapping + synthesis) in plain PyTorch, for SynthDistill's generator.

Written from the StyleGAN2 architecture (no NVlabs code, no custom CUDA ops): a mapping MLP (8 layers,
lr multiplier 0.01, leaky ReLU 0.2 with gain sqrt(2)), synthesis blocks 4 ... res with a learned constant,
modulated 3x3 convolutions with weight demodulation, per-pixel noise, the 'skip' output (a 1x1 toRGB per
block, the image upsampled and summed). FIR up-sampling ([1,3,3,1] filter, upfirdn2d's maths) is written
with ``conv_transpose2d`` / zero-stuffing plus a depthwise ``conv2d`` (no custom op, works on any device).

Weights load from safetensors in the NVlabs key layout (``mapping.fc{i}.*``, ``mapping.w_avg``,
``synthesis.b{res}.{const,conv0,conv1,torgb,resample_filter}``), stored unscaled: the equalised-lr gains
(``lr_mult / sqrt(fan_in)``) are applied at run time, as in the original. Keys match strictly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from distill.latent_generator import FACE_SIZE, LatentGenerator, LatentGeneratorError, resize_faces01

WEIGHTS_FILE, CONFIG_FILE = "G_ema.safetensors", "G_ema.json"
SQRT2 = math.sqrt(2.0)
# the authors' alignment of a 256 px FFHQ face to the ArcFace template: rows 21:234, columns 22:235
CROP_256 = (21, 234, 22, 235)


def fir_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable resample filter as a 2-D kernel normalised to sum 1 (NVlabs' ``setup_filter``)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int], gain: float) -> torch.Tensor:
    """Pad (left, right, top, bottom; negative crops) then a depthwise convolution with ``f * gain``."""
    x = F.pad(x, list(pad))
    c = x.shape[1]
    k = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling of an image (zero-stuffing, pad (2, 1), filter with gain 4)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h, 1, w, 1)
    x = F.pad(x, [0, 1, 0, 0, 0, 1]).reshape(b, c, 2 * h, 2 * w)
    fw = f.shape[-1]
    return _fir(x, f, ((fw + 1) // 2, (fw - 2) // 2, (fw + 1) // 2, (fw - 2) // 2), 4.0)


def lrelu_gain(x: torch.Tensor, gain: float = SQRT2, clamp: float | None = None) -> torch.Tensor:
    x = F.leaky_relu(x, 0.2) * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate: weight * lr_mult / sqrt(in), bias * lr_mult."""

    def __init__(self, in_features: int, out_features: int, lr_mult: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain, self.bias_gain = lr_mult / math.sqrt(in_features), lr_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_layers: int = 8, lr_mult: float = 0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers = z_dim, w_dim, num_layers
        dims = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", EqualLinear(dims[i], dims[i + 1], lr_mult))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalise the 2nd moment
        for i in range(self.num_layers):
            x = lrelu_gain(getattr(self, f"fc{i}")(x))
        if psi != 1.0:
            x = self.w_avg.lerp(x, psi)  # truncation trick
        return x


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                   up: bool = False, f: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution: scale input channels by the style, convolve (2x up-sampled with the FIR
    filter if ``up``), demodulate by each output's norm ``1/sqrt(sum (w * s)^2 + 1e-8)``."""
    k = weight.shape[-1]
    x = x * styles[:, :, None, None].to(x.dtype)
    if up:
        # transposed conv (stride 2, no padding) then the FIR filter with gain 4 and pad (1, 1): 2H out
        x = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
        fw = f.shape[-1]
        p0 = (fw + 1) // 2 + k // 2 - (k - 1)
        p1 = (fw - 2) // 2 + k // 2 - (k - 2)
        x = _fir(x, f, (p0, p1, p0, p1), 4.0)
    else:
        x = F.conv2d(x, weight.to(x.dtype), padding=k // 2)
    if demodulate:
        d = ((weight[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
        x = x * d[:, :, None, None].to(x.dtype)
    return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, up: bool = False,
                 conv_clamp: float | None = 256.0, kernel: int = 3):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", fir_filter())  # every layer holds it in the NVlabs layout
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """``generators``: one CPU RNG per row for the random noise (None: the global RNG)."""
        x = modulated_conv(x, self.weight, self.affine(w), True, self.up, self.resample_filter)
        if noise_mode == "random":
            shape = (1, self.resolution, self.resolution)
            noise = (torch.randn(x.shape[0], *shape) if generators is None
                     else torch.stack([torch.randn(shape, generator=g) for g in generators]))
            x = x + noise.to(x) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x) * self.noise_strength
        return lrelu_gain(x + self.bias.to(x)[None, :, None, None], SQRT2, self.conv_clamp)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, w_dim: int, img_channels: int = 3, conv_clamp: float | None = 256.0):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain, self.conv_clamp = 1.0 / math.sqrt(in_ch), conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        x = x + self.bias.to(x)[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SynthesisBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, conv_clamp: float | None):
        super().__init__()
        self.first = in_ch == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", fir_filter())  # the skip path's up-sampling filter
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_ch, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str, generators=None):
        """``ws`` [B, num_conv + 1, w_dim]: one w per conv and one for toRGB."""
        if self.first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode, generators)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, generators)
            x = self.conv1(x, ws[:, 1], noise_mode, generators)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2x(img, self.resample_filter) + y
        return x, img


def channels_for(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Channels of each block: ``min(channel_base / res, channel_max)``."""
    return {r: min(channel_base // r, channel_max) for r in block_resolutions(resolution)}


def block_resolutions(resolution: int) -> list[int]:
    if resolution < 4 or resolution & (resolution - 1):
        raise LatentGeneratorError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
    return [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, resolution: int, channels: dict[int, int], conv_clamp: float | None = 256.0):
        super().__init__()
        self.resolutions = block_resolutions(resolution)
        prev = 0
        for res in self.resolutions:
            setattr(self, f"b{res}", SynthesisBlock(prev, channels[res], w_dim, res, conv_clamp))
            prev = channels[res]
        self.num_ws = sum(getattr(self, f"b{r}").num_conv for r in self.resolutions) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", generators=None) -> torch.Tensor:
        x = img = None
        i = 0
        for res in self.resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode, generators)
            i += block.num_conv  # toRGB shares its w with the next block's first conv
        return img


class StyleGAN2(nn.Module):
    """``G_ema``: ``mapping`` and ``synthesis`` used separately (SynthDistill samples W itself)."""

    def __init__(self, z_dim: int = 512, w_dim: int = 512, resolution: int = 256, channel_base: int = 16384,
                 channel_max: int = 512, mapping_layers: int = 8, conv_clamp: float | None = 256.0,
                 channels: dict[int, int] | None = None):
        super().__init__()
        chans = {int(k): int(v) for k, v in (channels or channels_for(resolution, channel_base, channel_max)).items()}
        self.config = {"z_dim": z_dim, "w_dim": w_dim, "resolution": resolution, "mapping_layers": mapping_layers,
                       "conv_clamp": conv_clamp, "channels": {str(k): v for k, v in chans.items()}}
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, chans, conv_clamp)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """One w per style input: [B, w_dim] -> [B, num_ws, w_dim] (the same w everywhere)."""
        return w[:, None].expand(-1, self.synthesis.num_ws, -1)


def save_stylegan2(model: StyleGAN2, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(d / WEIGHTS_FILE))
    (d / CONFIG_FILE).write_text(json.dumps(model.config, indent=2))
    return d


def config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """The architecture implied by NVlabs-layout tensors (z/w dims, mapping depth, channels per block)."""
    try:
        n_map = len({k.split(".")[1] for k in state if k.startswith("mapping.fc")})
        res = sorted(int(k.split(".")[1][1:]) for k in state if k.startswith("synthesis.b") and k.endswith(".conv1.weight"))
        chans = {r: int(state[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res}
        return {"z_dim": int(state["mapping.fc0.weight"].shape[1]), "w_dim": int(state["mapping.w_avg"].shape[0]),
                "resolution": max(res), "mapping_layers": n_map, "channels": chans}
    except (KeyError, ValueError, IndexError) as exc:
        raise LatentGeneratorError(f"not a StyleGAN2 G_ema state_dict in the NVlabs layout ({exc!r})") from exc


def load_stylegan2(path: str | Path, device: str | torch.device = "cpu") -> StyleGAN2:
    """A ``G_ema`` from ``<dir>/G_ema.safetensors`` (+ ``G_ema.json``), or a ``.safetensors`` file path; strict keys."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"StyleGAN2 weights {weights} not found (convert an NVlabs .pkl with "
                                "python -m distill.stylegan2_convert)")
    state = load_file(str(weights))
    cfg_path = weights.with_name(CONFIG_FILE)
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else config_from_state(state)
    model = StyleGAN2(**cfg)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise LatentGeneratorError(f"{weights}: not a StyleGAN2 G_ema in the NVlabs key layout for {cfg}: "
                                   f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:4]}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


def align_ffhq256(img: torch.Tensor, size: int = FACE_SIZE) -> torch.Tensor:
    """The authors' post-processing of a 256 px face: clamp to [-1, 1], map to [0, 1], crop
    ``[21:234, 22:235]`` (eyes onto the ArcFace template), bilinear resize to ``size`` (no antialias)."""
    x = (img.float().clamp(-1, 1) + 1) / 2
    if x.shape[-1] == 256:
        y0, y1, x0, x1 = CROP_256
        x = x[:, :, y0:y1, x0:x1]
    return resize_faces01(x, size)


def noise_seed(w_row: torch.Tensor) -> int:
    """A seed hashed from one latent row's bytes: the random noise of a face is a function of its w only
    (re-synthesising the same w gives the same face; any other w, however close, fresh noise)."""
    data = w_row.detach().cpu().float().numpy().tobytes()
    return int(np.random.SeedSequence(list(np.frombuffer(data, dtype=np.uint32))).generate_state(1)[0])


class StyleGAN2Generator(LatentGenerator):
    """SynthDistill's generator: z ~ N(0, I) -> w = mapping(z) (psi 1) -> synthesis(w broadcast), noise
    'random' (seeded per batch from the latents' ``noise_seed``), aligned to 112 px."""

    name = "stylegan2"

    def __init__(self, model: StyleGAN2, device: str | torch.device = "cpu", psi: float = 1.0,
                 noise_mode: str = "random", batch: int = 32):
        if noise_mode not in ("random", "const", "none"):
            raise LatentGeneratorError(f"stylegan2 noise_mode must be random | const | none, got {noise_mode!r}")
        self.model, self.device = model.to(device), torch.device(device)
        self.z_dim, self.w_dim = model.mapping.z_dim, model.mapping.w_dim
        self.psi, self.noise_mode, self.batch = float(psi), noise_mode, int(batch)

    @torch.no_grad()
    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.mapping(z.to(self.device), self.psi).to(z.device)

    @torch.no_grad()
    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(w), self.batch):
            rows = w[start:start + self.batch]
            gens = [torch.Generator().manual_seed(noise_seed(r)) for r in rows]
            out.append(self.model.synthesis(self.model.broadcast(rows.to(self.device)), self.noise_mode, gens))
        return align_ffhq256(torch.cat(out)).to(w.device)

    def describe(self) -> dict:
        return {**super().describe(), "psi": self.psi, "noise_mode": self.noise_mode, **self.model.config}
