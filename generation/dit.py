"""Pixel-space DiT with adaLN-Zero for VIGFace stage 2 (VIGFace §3.2, Appendix A; Peebles & Xie's DiT).

Inputs: the noisy image ``x_t`` [B, 3, S, S] (S = 112, patch 4 -> 784 tokens for DiT-B/4), the
timestep ``t``, an FR prototype ``w`` [B, 512] and the landmark map ``y`` [B, L, S, S]
(``generation.landmark_map``). Output: the velocity ``v`` [B, 3, S, S].

Conditioning:
- prototype: an MLP projects ``w`` to the hidden width and the result is ADDED to the timestep
  embedding; the sum drives every adaLN modulation. Rows with ``drop_mask`` True use a learned null
  embedding instead (classifier-free guidance; the paper assigns zeros to the condition embedding,
  we learn the null vector as DiT does for its null class, as the task brief asks).
- landmarks: the map is concatenated to the image channels before the patch embedding, so each token
  sees the landmark evidence at its own location (cheap and spatially aligned); it is never dropped.

Attention and MLP are timm's blocks (fused SDPA), the sinusoidal timestep features and the fixed 2D
sin-cos positional embedding are diffusers'; only adaLN-Zero and the conditioning are written here.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.models.embeddings import Timesteps, get_2d_sincos_pos_embed
from timm.layers import Attention, Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

from generation.landmark_map import NUM_LANDMARKS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass
class DiTConfig:
    """Architecture of a DiT; ``to_dict``/``from_dict`` round-trip through JSON."""

    depth: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    patch_size: int = 4
    image_size: int = 112
    in_channels: int = 3
    landmark_channels: int = NUM_LANDMARKS  # 0 disables the landmark condition
    cond_dim: int = 512  # FR prototype dimension
    mlp_ratio: float = 4.0
    freq_dim: int = 256  # sinusoidal timestep features
    cond_drop_prob: float = 0.1  # CFG condition dropout used in training (VIGFace §3.2)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        checks = {
            "depth >= 1": self.depth >= 1,
            "hidden_size divisible by num_heads": self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
            "image_size divisible by patch_size": self.patch_size >= 1 and self.image_size % self.patch_size == 0,
            "hidden_size divisible by 4 (2D sin-cos embedding)": self.hidden_size % 4 == 0,
            "landmark_channels >= 0": self.landmark_channels >= 0,
            "0 <= cond_drop_prob <= 1": 0.0 <= self.cond_drop_prob <= 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"DiTConfig: invalid ({', '.join(bad)}): {self}")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"DiTConfig: unknown keys {unknown}; valid keys are {sorted(valid)}")
        return cls(**d)


# name -> (depth, hidden, heads, patch); S/B/L/XL as in DiT, at 112x112 with patch 4.
DIT_SIZES: dict[str, dict] = {
    "tiny": dict(depth=2, hidden_size=64, num_heads=2, patch_size=8),
    "S": dict(depth=12, hidden_size=384, num_heads=6, patch_size=4),
    "B": dict(depth=12, hidden_size=768, num_heads=12, patch_size=4),
    "L": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=4),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=4),
}


def dit_config(size: str, **overrides) -> DiTConfig:
    """The config of a named size ('tiny', 'S', 'B', 'L', 'XL') with field overrides."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {sorted(DIT_SIZES)}")
    return DiTConfig.from_dict({**DIT_SIZES[size], **overrides})


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens [B, N, D] by per-sample shift/scale [B, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sample_drop_mask(
    batch: int, p: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool [batch]: True (drop the prototype, use the null embedding) with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"sample_drop_mask: p must be in [0, 1], got {p}")
    gen_device = generator.device if generator is not None else device
    return (torch.rand(batch, generator=generator, device=gen_device) < p).to(device)


class DiTBlock(nn.Module):
    """Transformer block whose two LayerNorms are replaced by adaLN-Zero (shift, scale, gate)."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, mlp_hidden, act_layer=partial(nn.GELU, approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to pixel patches."""

    def __init__(self, hidden: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """v-prediction DiT conditioned on timestep, FR prototype (droppable) and landmark map."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_channels + c.landmark_channels, c.hidden_size)
        grid = c.image_size // c.patch_size
        pos = get_2d_sincos_pos_embed(c.hidden_size, grid, base_size=grid, output_type="pt")
        self.register_buffer("pos_embed", pos.float().unsqueeze(0), persistent=False)
        self.t_freq = Timesteps(c.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embed = Mlp(c.freq_dim, c.hidden_size, c.hidden_size, act_layer=nn.SiLU)
        self.proto_embed = Mlp(c.cond_dim, c.hidden_size, c.hidden_size, act_layer=nn.SiLU)
        self.null_embed = nn.Parameter(torch.randn(c.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.num_heads, c.mlp_hidden) for _ in range(c.depth))
        self.final = FinalLayer(c.hidden_size, c.patch_size, c.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's initialisation: xavier linears, N(0, 0.02) embedding MLPs, adaLN and output zeroed.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for mlp in (self.t_embed, self.proto_embed):
            nn.init.normal_(mlp.fc1.weight, std=0.02)
            nn.init.normal_(mlp.fc2.weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
            self.final.adaLN_modulation[-1],
            self.final.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition_embedding(
        self, t: torch.Tensor, prototype: torch.Tensor | None, drop_mask: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """c = MLP(sin(t)) + (MLP(w) where kept, null embedding where dropped)  [B, hidden]."""
        dtype = self.null_embed.dtype
        c = self.t_embed(self.t_freq(t).to(dtype))
        null = self.null_embed.expand(batch, -1)
        if prototype is None:
            return c + null
        proto = self.proto_embed(prototype.to(dtype))
        if drop_mask is None:
            return c + proto
        return c + torch.where(drop_mask.unsqueeze(1), null, proto)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, p*p*C] -> image [B, C, S, S]."""
        p, ch, g = self.config.patch_size, self.config.in_channels, self.config.image_size // self.config.patch_size
        x = tokens.reshape(tokens.shape[0], g, g, p, p, ch)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(tokens.shape[0], ch, g * p, g * p)

    def _validate(self, x, t, prototype, landmark_map, drop_mask) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"DiT: x must be [B, {c.in_channels}, {c.image_size}, {c.image_size}], got {tuple(x.shape)}"
            )
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"DiT: t must be a scalar or [B={b}], got {tuple(t.shape)}")
        if prototype is not None and prototype.shape != (b, c.cond_dim):
            raise ValueError(f"DiT: prototype must be [B={b}, {c.cond_dim}], got {tuple(prototype.shape)}")
        if c.landmark_channels:
            want = (b, c.landmark_channels, c.image_size, c.image_size)
            if landmark_map is None or landmark_map.shape != want:
                got = None if landmark_map is None else tuple(landmark_map.shape)
                raise ValueError(f"DiT: landmark_map must be {list(want)}, got {got}")
        elif landmark_map is not None:
            raise ValueError("DiT: landmark_map given but the config has landmark_channels=0")
        if drop_mask is not None and (drop_mask.dtype != torch.bool or drop_mask.shape != (b,)):
            raise ValueError(f"DiT: drop_mask must be a bool tensor [B={b}], got {drop_mask.dtype} {tuple(drop_mask.shape)}")
        return t

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        prototype: torch.Tensor | None,
        landmark_map: torch.Tensor | None,
        drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v [B, C, S, S]; ``prototype=None`` means every row uses the null embedding."""
        t = self._validate(x, t, prototype, landmark_map, drop_mask)
        inp = x if landmark_map is None else torch.cat([x, landmark_map.to(x.dtype)], dim=1)
        h = self.patch_embed(inp) + self.pos_embed.to(x.dtype)
        c = self.condition_embedding(t, prototype, drop_mask, x.shape[0])
        use_ckpt = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, c, use_reentrant=False) if use_ckpt else block(h, c)
        return self.unpatchify(self.final(h, c))


def build_dit(size: str, **overrides) -> DiT:
    """A freshly initialised DiT of a named size with config overrides (e.g. image_size=32)."""
    return DiT(dit_config(size, **overrides))


def save_dit(model: DiT, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / WEIGHTS_FILE))


def load_dit(directory: str | Path, device: torch.device | str = "cpu") -> DiT:
    """Rebuild a DiT saved by ``save_dit``."""
    from safetensors.torch import load_file

    d = Path(directory)
    model = DiT(DiTConfig.from_dict(json.loads((d / CONFIG_FILE).read_text())))
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE), device=str(device)))
    return model.to(device)


def flops_per_forward(config: DiTConfig) -> int:
    """Analytic matmul FLOPs (2 x multiply-adds) of one forward pass for ONE image.

    Counts patch embedding, timestep and prototype MLPs, adaLN projections, attention projections,
    the QK^T and AV products, the MLPs and the output layer; ignores norms, activations, softmax.
    """
    c = config
    n, d, f = c.num_tokens, c.hidden_size, c.mlp_hidden
    patch_in = (c.in_channels + c.landmark_channels) * c.patch_size**2
    macs = n * patch_in * d  # patch embedding
    macs += c.freq_dim * d + d * d  # timestep MLP
    macs += c.cond_dim * d + d * d  # prototype MLP
    per_block = d * 6 * d  # adaLN
    per_block += n * 4 * d * d  # qkv + output projection
    per_block += 2 * n * n * d  # QK^T and AV
    per_block += n * 2 * d * f  # MLP
    macs += c.depth * per_block
    macs += d * 2 * d + n * d * c.patch_size**2 * c.in_channels  # final adaLN + output linear
    return 2 * macs


__all__ = [
    "DiT",
    "DiTConfig",
    "DIT_SIZES",
    "build_dit",
    "dit_config",
    "flops_per_forward",
    "load_dit",
    "modulate",
    "sample_drop_mask",
    "save_dit",
]
