"""FR training augmentations of VIGFace (Appendix A, Table 3), after AdaFace.

Horizontal flip (p 0.5), then rescale, colour jitter and random erasing, each with probability 0.2.
All ops take and return RGB uint8 (H, W, 3) numpy arrays and draw randomness only from an explicit
`np.random.Generator`, so a (seed, image) pair always gives the same output.

Random erasing size: the paper says the erased region size is 0.02-0.33 "times the original image
width"; `erase_scale_of="width"` (default) reads that literally, as the side of the equal-area
square: area = (s * W)^2, i.e. 0.04 %-10.9 % of a square image. The same numbers are torchvision's
`RandomErasing` defaults, where s is the *area* fraction (2 %-33 %); `erase_scale_of="area"` gives that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos4": cv2.INTER_LANCZOS4,
}
# torchvision's uint8 kernels give exactly ColorJitter's semantics (clamping after each op).
_JITTER_OPS = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
}
_MAX_ERASE_ATTEMPTS = 10  # as torchvision RandomErasing


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the FR training augmentations (defaults: VIGFace Table 3)."""

    enabled: bool = True
    flip_prob: float = 0.5
    erase_prob: float = 0.2
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_scale_of: str = "width"  # "width": side = s*W (paper text); "area": area = s*H*W (torchvision)
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # height/width, sampled log-uniformly
    erase_value: int = 0
    rescale_prob: float = 0.2
    rescale_range: tuple[float, float] = (0.2, 1.0)  # shrink factor of width and height
    interpolations: tuple[str, ...] = tuple(INTERPOLATIONS)
    jitter_prob: float = 0.2
    brightness: float = 0.5  # factor uniform in [1 - b, 1 + b], as ColorJitter(b, c, s)
    contrast: float = 0.5
    saturation: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):  # YAML gives lists; keep tuples
            if isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        for name in ("flip_prob", "erase_prob", "rescale_prob", "jitter_prob"):
            _check(0.0 <= getattr(self, name) <= 1.0, name, "must lie in [0, 1]")
        for name, lo_min, hi_max in (("erase_scale", 0.0, 1.0), ("erase_ratio", 0.0, math.inf),
                                     ("rescale_range", 0.0, 1.0)):
            value = getattr(self, name)
            _check(len(value) == 2 and lo_min < value[0] <= value[1] <= hi_max, name,
                   f"must be (lo, hi) with {lo_min} < lo <= hi <= {hi_max}")
        _check(self.erase_scale_of in ("width", "area"), "erase_scale_of", "must be 'width' or 'area'")
        _check(0 <= self.erase_value <= 255, "erase_value", "must lie in [0, 255]")
        _check(len(self.interpolations) > 0 and set(self.interpolations) <= set(INTERPOLATIONS),
               "interpolations", f"must be a non-empty subset of {list(INTERPOLATIONS)}")
        for name in _JITTER_OPS:
            _check(0.0 <= getattr(self, name) <= 1.0, name, "must lie in [0, 1]")


def _check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ValueError(f"AugmentConfig.{name} {what}")


def hflip(rgb: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(rgb[:, ::-1])


def sample_erase_box(rng: np.random.Generator, height: int, width: int, cfg: AugmentConfig
                     ) -> tuple[int, int, int, int] | None:
    """(top, left, box_height, box_width) of a random erasing box, or None if no draw fits
    (torchvision's rejection scheme: up to 10 draws of size and log-uniform aspect ratio)."""
    log_ratio = (math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]))
    for _ in range(_MAX_ERASE_ATTEMPTS):
        s = rng.uniform(*cfg.erase_scale)
        area = s * height * width if cfg.erase_scale_of == "area" else (s * width) ** 2
        ratio = math.exp(rng.uniform(*log_ratio))
        bh, bw = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 1 <= bh < height and 1 <= bw < width:
            return int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1)), bh, bw
    return None


def erase(rgb: np.ndarray, box: tuple[int, int, int, int] | None, value: int = 0) -> np.ndarray:
    """Copy of `rgb` with the box filled with `value`."""
    out = rgb.copy()
    if box is not None:
        top, left, bh, bw = box
        out[top:top + bh, left:left + bw] = value
    return out


def rescale(rgb: np.ndarray, factor: float, down: int, up: int) -> np.ndarray:
    """Shrink width and height by `factor` with cv2 interpolation `down`, restore with `up`."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=up)


def sample_jitter(rng: np.random.Generator, cfg: AugmentConfig) -> list[tuple[str, float]]:
    """ColorJitter's draw: each enabled op gets a factor uniform in [1 - b, 1 + b]; random order."""
    ops = [(name, float(rng.uniform(1.0 - getattr(cfg, name), 1.0 + getattr(cfg, name))))
           for name in _JITTER_OPS if getattr(cfg, name) > 0]
    return [ops[i] for i in rng.permutation(len(ops))]


def color_jitter(rgb: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
    """Apply (op, factor) adjustments in order with torchvision's uint8 kernels."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    for name, factor in ops:
        x = _JITTER_OPS[name](x, factor)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


class FaceAugment:
    """flip -> rescale -> colour jitter -> random erasing (last, so erased pixels stay exactly 0)."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
        cfg = self.config
        out = rgb.copy()
        if not cfg.enabled:
            return out
        if rng.random() < cfg.flip_prob:
            out = hflip(out)
        if rng.random() < cfg.rescale_prob:
            down, up = (INTERPOLATIONS[cfg.interpolations[i]]
                        for i in rng.integers(0, len(cfg.interpolations), size=2))
            out = rescale(out, rng.uniform(*cfg.rescale_range), down, up)
        if rng.random() < cfg.jitter_prob:
            out = color_jitter(out, sample_jitter(rng, cfg))
        if rng.random() < cfg.erase_prob:
            out = erase(out, sample_erase_box(rng, *out.shape[:2], cfg), cfg.erase_value)
        return out
