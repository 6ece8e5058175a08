"""AugGen's generator network: an EDM2-style magnitude-preserving class-conditional UNet plus EDM
preconditioning (``EDM2Denoiser``), with sizes as data (:data:`EDM2_PRESETS`).

Written from the EDM2 facts in DESIGN.md (NVlabs/edm2 is CC BY-NC-SA: nothing is copied). The label
path is linear in a float vector ``c`` of length ``num_classes``:
``emb = mp_silu(mp_sum(noise_linear(fourier(c_noise)), label_linear(c * sqrt(num_classes)), t=0.5))``,
so one-hot rows, AugGen's mixed rows ``alpha c_i + beta c_j`` and the zero row (unconditional, what
label dropout trains) all go straight in. Optionally (``label_basis_dim > 0``, not in EDM2 or AugGen: a choice
of ours, docs/methods_auggen.md) the label linear reads ``c B sqrt(d)`` instead, with ``B`` [num_classes, d] a
fixed buffer of unit class vectors (e.g. the target-data FR model's class prototypes): still linear in ``c``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from generation.edm2_layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, pixel_norm_attention, resample


@dataclass
class EDM2Config:
    image_size: int = 32
    num_classes: int = 10
    image_channels: int = 3
    model_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_blocks: int = 1  # encoder blocks per level (the decoder has one more)
    attn_resolutions: list[int] = field(default_factory=lambda: [8])
    channels_per_head: int = 64
    dropout: float = 0.0
    label_balance: float = 0.5
    label_basis_dim: int = 0  # > 0: the label path reads c @ label_basis (a fixed [num_classes, d] buffer)
    concat_balance: float = 0.5
    res_balance: float = 0.3
    attn_balance: float = 0.3
    clip_act: float = 256.0
    sigma_data: float = 0.5
    logvar_channels: int = 128

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} "
                             f"(channel_mult has {levels} levels)")
        if self.num_classes < 1 or self.model_channels < 1 or self.num_blocks < 1:
            raise ValueError("num_classes, model_channels and num_blocks must be >= 1")
        if self.label_basis_dim < 0:
            raise ValueError(f"label_basis_dim must be >= 0, got {self.label_basis_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EDM2Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EDM2 config: unknown key(s) {unknown}; valid: {sorted(known)}")
        return cls(**data)


# sizes as data. tiny: a CPU model (32 px, ~1 block per level). xs/s at 112 px: EDM2-XS/S widths
# (model_channels 128/192, channel_mult [1,2,3,4], 3 blocks per level) with attention at 28 and 14 px.
EDM2_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=32, model_channels=32, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8]),
    "xs": dict(image_size=112, model_channels=128, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[28, 14]),
    "s": dict(image_size=112, model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[28, 14]),
}


def edm2_config(size: str, num_classes: int, **overrides: Any) -> EDM2Config:
    if size not in EDM2_PRESETS:
        raise ValueError(f"unknown EDM2 size {size!r}; known: {sorted(EDM2_PRESETS)}")
    return EDM2Config.from_dict({**EDM2_PRESETS[size], "num_classes": num_classes, **overrides})


class Block(nn.Module):
    """One UNet block: (resample) -> [pixel norm, encoder] -> residual branch modulated by the embedding
    (``c = emb_linear(emb, gain) + 1``, gain initialised 0) -> ``mp_sum(x, y, res_balance)`` -> optional
    pixel-norm attention -> clip."""

    def __init__(self, cin: int, cout: int, cemb: int, flavor: str, cfg: EDM2Config, resample_mode: str = "keep",
                 attention: bool = False):
        super().__init__()
        self.flavor, self.resample_mode, self.cfg = flavor, resample_mode, cfg
        self.out_channels = cout
        self.num_heads = cout // cfg.channels_per_head if attention else 0
        if attention and self.num_heads < 1:
            self.num_heads = 1
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(cout if flavor == "enc" else cin, cout, (3, 3))
        self.emb_linear = MPConv(cemb, cout)
        self.conv_res1 = MPConv(cout, cout, (3, 3))
        self.conv_skip = MPConv(cin, cout, (1, 1)) if cin != cout else None
        self.attn_qkv = MPConv(cout, cout * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(cout, cout, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.cfg.dropout > 0:
            y = nn.functional.dropout(y, p=self.cfg.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.cfg.res_balance)
        if self.num_heads:
            y = self.attn_proj(pixel_norm_attention(self.attn_qkv(x), self.num_heads))
            x = mp_sum(x, y, self.cfg.attn_balance)
        if self.cfg.clip_act:
            x = x.clip(-self.cfg.clip_act, self.cfg.clip_act)
        return x


class EDM2UNet(nn.Module):
    """The raw network F(x, c_noise, class_vector) of EDM2 (before preconditioning)."""

    def __init__(self, cfg: EDM2Config):
        super().__init__()
        self.cfg = cfg
        cblock = [cfg.model_channels * m for m in cfg.channel_mult]
        cnoise, cemb = cblock[0], max(cblock)
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb)
        self.emb_label = MPConv(cfg.label_basis_dim or cfg.num_classes, cemb)
        if cfg.label_basis_dim:  # filled by set_label_basis; saved with the weights (a buffer, never trained)
            self.register_buffer("label_basis", torch.zeros(cfg.num_classes, cfg.label_basis_dim))
        self.enc = nn.ModuleDict()
        cout = cfg.image_channels + 1  # + the constant ones channel
        for level, channels in enumerate(cblock):
            res = cfg.image_size >> level
            if level == 0:
                self.enc[f"{res}_conv"] = MPConv(cout, channels, (3, 3))
                cout = channels
            else:
                self.enc[f"{res}_down"] = Block(cout, cout, cemb, "enc", cfg, resample_mode="down")
            for idx in range(cfg.num_blocks):
                self.enc[f"{res}_block{idx}"] = Block(cout, channels, cemb, "enc", cfg,
                                                      attention=res in cfg.attn_resolutions)
                cout = channels
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = cfg.image_size >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}_in0"] = Block(cout, cout, cemb, "dec", cfg, attention=True)
                self.dec[f"{res}_in1"] = Block(cout, cout, cemb, "dec", cfg)
            else:
                self.dec[f"{res}_up"] = Block(cout, cout, cemb, "dec", cfg, resample_mode="up")
            for idx in range(cfg.num_blocks + 1):
                cin = cout + skips.pop()
                self.dec[f"{res}_block{idx}"] = Block(cin, channels, cemb, "dec", cfg,
                                                      attention=res in cfg.attn_resolutions)
                cout = channels
        self.out_conv = MPConv(cout, cfg.image_channels, (3, 3))
        self.out_gain = nn.Parameter(torch.zeros([]))  # zero-initialised output: F = 0 at the start

    def label_input(self, class_vector: torch.Tensor) -> torch.Tensor:
        """What the label linear reads: ``c sqrt(num_classes)`` (EDM2), or ``c B sqrt(d)`` with the class basis B
        [num_classes, d] of unit rows; either way a one-hot row has unit mean square."""
        if not self.cfg.label_basis_dim:
            return class_vector * math.sqrt(class_vector.shape[1])
        return (class_vector @ self.label_basis.to(class_vector.dtype)) * math.sqrt(self.cfg.label_basis_dim)

    def embedding(self, c_noise: torch.Tensor, class_vector: torch.Tensor) -> torch.Tensor:
        """``mp_silu(mp_sum(noise_linear(fourier(c_noise)), label_linear(label_input(c)), 0.5))``."""
        emb = self.emb_noise(self.emb_fourier(c_noise))
        label = self.emb_label(self.label_input(class_vector.to(emb.dtype)))
        return mp_silu(mp_sum(emb, label, t=self.cfg.label_balance))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_vector: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(c_noise, class_vector)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.cfg.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


def set_label_basis(model: "EDM2Denoiser", class_vectors: torch.Tensor) -> None:
    """Fill the model's fixed class basis with ``class_vectors`` [num_classes, label_basis_dim] (row k = class k),
    unit-normalised; a model without a basis, a wrong shape or a zero row is a ValueError."""
    cfg = model.config
    if not cfg.label_basis_dim:
        raise ValueError("this EDM2 model has no class basis (label_basis_dim 0)")
    vectors = torch.as_tensor(class_vectors, dtype=torch.float32)
    if vectors.shape != (cfg.num_classes, cfg.label_basis_dim):
        raise ValueError(f"class basis must be [{cfg.num_classes}, {cfg.label_basis_dim}], got {tuple(vectors.shape)}")
    norms = vectors.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(vectors).all()) or bool((norms == 0).any()):
        raise ValueError("class basis rows must be finite and non-zero")
    with torch.no_grad():
        model.unet.label_basis.copy_(vectors / norms)


def precondition(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """EDM preconditioning (Karras et al. 2022, Table 1): c_skip, c_out, c_in, c_noise."""
    s2, sd2 = sigma ** 2, sigma_data ** 2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()
    c_in = 1 / (s2 + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDM2Denoiser(nn.Module):
    """``D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, c)`` plus EDM2's learned log-variance
    ``u(sigma) = linear(fourier(c_noise))`` (used only by the loss)."""

    def __init__(self, cfg: EDM2Config):
        super().__init__()
        self.config = cfg
        self.unet = EDM2UNet(cfg)
        self.logvar_fourier = MPFourier(cfg.logvar_channels)
        self.logvar_linear = MPConv(cfg.logvar_channels, 1)

    def check_class_vector(self, class_vector: torch.Tensor, batch: int) -> None:
        if class_vector.ndim != 2 or class_vector.shape != (batch, self.config.num_classes):
            raise ValueError(f"class vectors must be [B={batch}, num_classes={self.config.num_classes}], "
                             f"got {tuple(class_vector.shape)}")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_vector: torch.Tensor,
                return_logvar: bool = False):
        self.check_class_vector(class_vector, x.shape[0])
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.config.sigma_data)
        f = self.unet((c_in * x).to(x.dtype), c_noise.flatten(), class_vector)
        d = c_skip * x.to(torch.float32) + c_out * f.to(torch.float32)
        if not return_logvar:
            return d
        logvar = self.logvar_linear(self.logvar_fourier(c_noise.flatten())).reshape(-1, 1, 1, 1)
        return d, logvar.to(torch.float32)
