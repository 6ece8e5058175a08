"""The toy face renderer (``fr.data.toyfaces``) as a latent generator of NEW random people.

Every identity and nuisance parameter of a toy face is read from one continuous latent row: entry k as
a standard normal ``g_k``, or as a uniform ``u_k = Phi(g_k)`` mapped onto the parameter's range (the
renderer's own ranges and distributions). Discrete choices (hair and eye palette, glasses, headwear, the
presence of a beard, fringe or skin marks, the freckle pattern) are thresholds or coarse quantisations
of continuous entries, so a small move of the latent gives the same or a very similar face and
``w + c*s*n`` (SynthDistill eq. 3) is meaningful.

Mapping (Z -> W): ``w = w_scale * z``. The toy has no learned mapping network; W differs from Z by its
spread only, so a unit of re-sampling noise is ``1/w_scale`` of the population spread in W and the whole
spread in Z (StyleGAN's W is likewise not unit-variance).

New people by construction: toy dataset identities come from integer seeds of the "train" and "verify"
splits through ``sample_identity``; here the parameters are continuous functions of a Gaussian vector,
so a generated face equals a dataset identity with probability zero (``tests/test_distill_toy.py`` checks
the parameter distance to the tiny preset's identities).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtr
from scipy.stats import beta as beta_dist

from distill.latent_generator import FACE_SIZE, LatentGenerator, resize_faces01
from fr.data import toyfaces as tf
from fr.data.images import decode_image, encode_image

_FRECKLE_PATTERNS = 64  # the freckle field is one of this many seeded patterns (a quantised latent entry)
_MOLE_SLOTS = 4  # each present with p 0.375: 1.5 moles on average, the renderer's Poisson mean
_DETAIL_SEEDS = 256  # drawing details (accessory geometry, noise crop) from a quantised latent entry


class _LatentReader:
    """Reads parameters from one latent row in a fixed order; the order is the latent layout."""

    def __init__(self, g: np.ndarray):
        self.g, self.k = g, 0

    def normal(self, std: float = 1.0) -> float:
        v = float(self.g[self.k]) if self.k < len(self.g) else 0.0
        self.k += 1
        return v * std

    def unit(self) -> float:
        return float(ndtr(self.normal()))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.unit()

    def gated(self, p: float, lo: float, hi: float, off: float = 0.0) -> float:
        """``U(lo, hi)`` with probability ``p``, else ``off`` (two entries: the gate and the value)."""
        gate, value = self.unit(), self.uniform(lo, hi)
        return value if gate < p else off

    def choice(self, weights) -> int:
        cdf = np.cumsum(weights) / np.sum(weights)
        return int(min(np.searchsorted(cdf, self.unit(), side="right"), len(cdf) - 1))

    def index(self, n: int) -> int:
        return min(int(self.unit() * n), n - 1)

    def truncnorm(self, std: float, limit: float) -> float:
        return float(np.clip(self.normal(std), -limit, limit))

    def colour(self, base, jitter: float) -> tuple[float, float, float]:
        return tuple(float(np.clip(b + self.normal(jitter), 0, 255)) for b in base)

    def uniform_colour(self) -> tuple[float, float, float]:
        return tuple(self.uniform(0, 255) for _ in range(3))


def _marks(r: _LatentReader, skin: np.ndarray, rx: float, ry: float, cy: float) -> tuple:
    """Freckle field (seeded pattern), mole slots and a birthmark, as the renderer's ``_sample_marks``."""
    marks = []
    freckles, count, pattern = r.unit() < 0.35, 8 + r.index(22), r.index(_FRECKLE_PATTERNS)
    if freckles:
        rng = np.random.default_rng(pattern)
        for x, y, rad, tone in zip(rng.normal(0, 0.45, count), rng.normal(0.45, 0.18, count),
                                   rng.uniform(0.015, 0.03, count), rng.uniform(0.6, 0.75, count)):
            marks.append((x, y, rad, *(skin * tone * [1.0, 0.85, 0.75])))
    for _ in range(_MOLE_SLOTS):
        present, t, rad = r.unit() < 0.375, r.uniform(0, 2 * np.pi), np.sqrt(r.uniform(0.05, 0.75))
        size = r.uniform(0.03, 0.06)
        if present:
            marks.append((rad * rx * np.cos(t), cy + rad * ry * np.sin(t), size, *(skin * 0.35)))
    present, bx, by = r.unit() < 0.2, r.uniform(-0.8, 0.8), r.uniform(-0.6, 0.6)
    size, tone = r.uniform(0.08, 0.16), r.uniform(0.7, 0.9)
    if present:
        marks.append((bx * rx, cy + by * ry, size, *(skin * tone * [1.05, 0.8, 0.8])))
    return tuple(tuple(float(v) for v in m) for m in marks)


def identity_from_latent(r: _LatentReader) -> tf.ToyIdentity:
    """A toy identity read from the latent (the renderer's ranges; ``seed`` -1: not a dataset identity)."""
    u = r.uniform
    geometry = dict(eye_sep=u(0.88, 1.12), face_rx=u(0.92, 1.25), face_ry=u(1.35, 1.75), face_cy=u(0.22, 0.45),
                    jaw=u(0.0, 0.45), eye_w=u(0.16, 0.25), eye_h=u(0.065, 0.12), eye_tilt=u(-0.18, 0.18),
                    iris=u(0.75, 1.0), brow_gap=u(0.17, 0.32), brow_arch=u(0.0, 0.1), brow_thick=u(0.035, 0.11),
                    brow_len=u(0.32, 0.55), brow_tilt=u(-0.1, 0.1), nose_len=u(0.42, 0.68), nose_w=u(0.22, 0.4),
                    nose_depth=u(0.2, 0.45))
    geometry["mouth_y"] = geometry["nose_len"] + u(0.35, 0.62)
    geometry.update(mouth_w=u(0.55, 0.95), lip_upper=u(0.03, 0.09), lip_lower=u(0.04, 0.12),
                    mouth_curve=u(-0.05, 0.05), ear_size=u(0.22, 0.38), ear_y=u(0.1, 0.4),
                    hair_top=u(-1.35, -0.65), hair_part=u(-0.6, 0.6), fringe=r.gated(0.6, 0.0, 0.5),
                    hair_volume=u(0.02, 0.35), hair_length=r.gated(0.4, 0.0, 1.4), beard=r.gated(0.2, 0.3, 0.9))
    shade = float(beta_dist.ppf(r.unit(), 1.6, 1.6))
    skin = tf._SKIN_LIGHT + (tf._SKIN_DARK - tf._SKIN_LIGHT) * shade + np.array([r.normal(8), r.normal(6), r.normal(6)])
    hair = r.colour(tf._HAIR_PALETTE[r.choice(tf._HAIR_WEIGHTS)], 12.0)
    eye = r.colour(tf._EYE_PALETTE[r.index(len(tf._EYE_PALETTE))], 10.0)
    lips = r.colour(skin * np.array([0.95, 0.62, 0.62]) + np.array([25.0, 0.0, 5.0]) * u(0.2, 1.5), 6.0)
    skin_t = tuple(float(c) for c in np.clip(skin, 0, 255))
    marks = _marks(r, skin, geometry["face_rx"], geometry["face_ry"], geometry["face_cy"])
    return tf.ToyIdentity(seed=-1, **geometry, skin=skin_t, hair=hair, eye_colour=eye, lips=lips, marks=marks)


def nuisance_from_latent(r: _LatentReader) -> tf.ToyNuisance:
    """Pose, expression, light, occlusion and degradation read from the latent (the renderer's ranges)."""
    u, rad = r.uniform, np.deg2rad
    return tf.ToyNuisance(
        yaw=r.truncnorm(rad(16), rad(40)), pitch=r.truncnorm(rad(9), rad(22)), roll=r.truncnorm(rad(10), rad(30)),
        scale=float(np.exp(u(np.log(0.75), np.log(1.25)))), offset=(u(-8, 8), u(-8, 8)),
        smile=r.gated(0.5, 0.0, 1.0), mouth_open=r.gated(0.3, 0.03, 0.3), eye_open=r.gated(0.9, 0.6, 1.1, off=0.15),
        gaze=(u(-1, 1), u(-0.5, 0.5)), light_angle=u(0, 2 * np.pi), light_strength=u(0.0, 0.75), gain=u(0.55, 1.35),
        cast=tuple(float(np.exp(r.normal(0.12))) for _ in range(3)),
        background=(r.uniform_colour(), r.uniform_colour()), background_blobs=r.index(4),
        clothes=r.uniform_colour(), glasses=r.choice([0.8, 0.14, 0.06]), headwear=r.choice([0.86, 0.07, 0.07]),
        bar=r.unit() < 0.08, hand=r.unit() < 0.07, accessory_colour=r.uniform_colour(),
        blur_sigma=r.gated(0.4, 0.4, 2.2), noise_sigma=u(0.0, 9.0), jpeg_u=r.unit(), seed=r.index(_DETAIL_SEEDS))


def _count_entries() -> int:
    r = _LatentReader(np.zeros(0))
    skin_probe = identity_from_latent(r)
    del skin_probe
    nuisance_from_latent(r)
    return r.k


LATENT_DIM = _count_entries()


def face_params(g: np.ndarray) -> tuple[tf.ToyIdentity, tf.ToyNuisance]:
    """The identity and nuisance of one standardised latent row ``g`` (= w / w_scale)."""
    if g.shape != (LATENT_DIM,):
        raise ValueError(f"toy latent rows must have {LATENT_DIM} entries, got shape {g.shape}")
    r = _LatentReader(np.asarray(g, dtype=np.float64))
    return identity_from_latent(r), nuisance_from_latent(r)


class ToyLatentGenerator(LatentGenerator):
    """Toy faces from latents. ``render_size``: the renderer's side (faces are resized to 112 after);
    ``jpeg``: encode/decode each face at the quality its latent picks (the toy dataset's JPEG range),
    so generated faces look like the dataset's."""

    name = "toy"

    def __init__(self, w_scale: float = 2.0, render_size: int = FACE_SIZE, jpeg: bool = True,
                 jpeg_quality: tuple[int, int] = (60, 95)):
        if w_scale <= 0:
            raise ValueError(f"toy generator: w_scale must be > 0, got {w_scale}")
        self.z_dim = self.w_dim = LATENT_DIM
        self.w_scale, self.render_size, self.jpeg = float(w_scale), int(render_size), bool(jpeg)
        self.jpeg_quality = jpeg_quality

    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.w_scale

    def params(self, w: torch.Tensor) -> list[tuple[tf.ToyIdentity, tf.ToyNuisance]]:
        g = (w.detach().cpu().double() / self.w_scale).numpy()
        return [face_params(row) for row in g]

    def render(self, w: torch.Tensor) -> np.ndarray:
        """RGB uint8 faces [B, render_size, render_size, 3]."""
        faces = []
        lo, hi = self.jpeg_quality
        for identity, nuisance in self.params(w):
            rgb, _ = tf.render_aligned(identity, nuisance, self.render_size)
            if self.jpeg:
                rgb = decode_image(encode_image(rgb, "jpg", int(lo + min(nuisance.jpeg_u, 0.999) * (hi - lo + 1))))
            faces.append(rgb)
        return np.stack(faces)

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(self.render(w)).permute(0, 3, 1, 2).float().div_(255.0)
        return resize_faces01(x, self.image_size).to(w.device)

    def describe(self) -> dict:
        return {**super().describe(), "w_scale": self.w_scale, "render_size": self.render_size, "jpeg": self.jpeg}
