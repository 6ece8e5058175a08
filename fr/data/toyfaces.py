"""Embedded toy identities: deterministic cartoon faces rendered with OpenCV (no download).

An identity is a random vector of face geometry, colours and a fixed pattern of skin marks drawn
from its seed. Every image adds nuisance drawn from its own seed: head pose (roll; yaw and pitch
through a pseudo-3D ellipsoid head, which moves the five landmarks), expression, illumination,
occlusion, background, blur, noise and JPEG quality. Faces are rendered on a larger canvas and
aligned to the ArcFace template by :func:`fr.data.alignment.align_face` from their exact landmarks,
the same path a real dataset takes; the photometric nuisance (light, blur, noise) is applied to
the aligned crop, and JPEG when records are encoded.

Face coordinates: x right, y down, in units of about one inter-ocular distance; the eyes sit on
y = 0 at x = -+eye_sep/2; the head is an ellipsoid centred at (0, face_cy).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fr.data.alignment import ARCFACE_TEMPLATE, TEMPLATE_SIZE, align_face
from fr.data.images import encode_image

_SPLITS = {"train": 0, "verify": 1}
_SHIFT = 4  # cv2 drawing: coordinates carry 4 fractional bits
_ONE = float(1 << _SHIFT)
_CANVAS_FACTOR = 1.5  # canvas side / aligned side
_TEMPLATE_IOD = float(np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0]))
_LANDMARK_ANCHOR_Y = 0.55  # face-coordinate y placed near the canvas centre (mean of the 5 points)


@dataclass(frozen=True)
class ToyFaceConfig:
    """Size and shape of a toy dataset. All of it is a pure function of these fields."""

    num_identities: int = 1000
    seed: int = 0
    image_size: int = 112
    min_images: int = 4
    max_images: int = 100
    tail_exponent: float = 0.5
    jpeg_quality: tuple[int, int] = (60, 95)

    def __post_init__(self) -> None:
        if self.num_identities < 1:
            raise ValueError(f"ToyFaceConfig.num_identities must be >= 1, got {self.num_identities}")
        if self.seed < 0:
            raise ValueError(f"ToyFaceConfig.seed must be >= 0, got {self.seed}")
        if self.image_size < 16:
            raise ValueError(f"ToyFaceConfig.image_size must be >= 16, got {self.image_size}")
        if not 1 <= self.min_images <= self.max_images:
            raise ValueError(
                f"ToyFaceConfig needs 1 <= min_images <= max_images, got {self.min_images}, {self.max_images}"
            )
        if self.tail_exponent < 0:
            raise ValueError(f"ToyFaceConfig.tail_exponent must be >= 0, got {self.tail_exponent}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"ToyFaceConfig.jpeg_quality must be (lo, hi) with 1 <= lo <= hi <= 100, got {lo, hi}")


@dataclass(frozen=True)
class ToyIdentity:
    """Parameters of one toy identity (face units, RGB colours 0-255)."""

    seed: int
    eye_sep: float
    face_rx: float
    face_ry: float
    face_cy: float
    jaw: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: float
    brow_gap: float
    brow_arch: float
    brow_thick: float
    brow_len: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    nose_depth: float
    mouth_y: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    mouth_curve: float
    ear_size: float
    ear_y: float
    hair_top: float
    hair_part: float
    fringe: float
    hair_volume: float
    hair_length: float
    beard: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    eye_colour: tuple[float, float, float]
    lips: tuple[float, float, float]
    marks: tuple[tuple[float, ...], ...]  # (x, y, radius, r, g, b) freckles, moles, birthmarks

    def vector(self) -> np.ndarray:
        """Geometry and colours as one float vector (for finding look-alike identities)."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in ("seed", "marks"):
                continue
            out.extend(np.atleast_1d(getattr(self, f.name)).astype(float).tolist())
        return np.asarray(out)


@dataclass(frozen=True)
class ToyNuisance:
    """Per-image nuisance (angles in radians, offsets in canvas pixels, colours RGB)."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    offset: tuple[float, float]
    smile: float
    mouth_open: float
    eye_open: float
    gaze: tuple[float, float]
    light_angle: float
    light_strength: float
    gain: float
    cast: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_blobs: int
    clothes: tuple[float, float, float]
    glasses: int  # 0 none, 1 clear, 2 sunglasses
    headwear: int  # 0 none, 1 hair band, 2 hat
    bar: bool
    hand: bool
    accessory_colour: tuple[float, float, float]
    blur_sigma: float
    noise_sigma: float
    jpeg_u: float  # uniform [0, 1): position of the JPEG quality in the configured range
    seed: int  # for the drawing details (accessory geometry, clutter, noise)


# --------------------------------------------------------------------------------------------
# seeds and class sizes


def _hash_seed(*parts: int) -> int:
    """A 62-bit integer derived from the non-negative ints ``parts`` (numpy SeedSequence hashing)."""
    if any(p < 0 for p in parts):
        raise ValueError(f"seeds and indices must be non-negative, got {parts}")
    hi, lo = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) >> 2


def toy_identity_seed(base_seed: int, index: int, split: str) -> int:
    """Seed of identity ``index`` of ``split`` ("train" or "verify").

    The split is stored in the two low bits, so train and verify seeds can never coincide.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown toy split {split!r}; expected one of {sorted(_SPLITS)}")
    code = _SPLITS[split]
    return (_hash_seed(base_seed, index, code) << 2) | code


def toy_sample_seed(identity_seed: int, sample_index: int) -> int:
    """Seed of image ``sample_index`` of the identity with seed ``identity_seed``."""
    return _hash_seed(identity_seed, sample_index, 0xFACE)


def class_sizes(num_identities: int, min_images: int, max_images: int, seed: int, exponent: float = 0.5) -> np.ndarray:
    """Long-tailed images-per-identity: ``max_images * rank**-exponent`` clipped to [min, max].

    A Zipf-like law by rank, as in CASIA-WebFace (a few identities with many images, most with
    few). Ranks are assigned to identities by a permutation drawn from ``seed``; int64 array.
    """
    if num_identities < 1 or not 1 <= min_images <= max_images or exponent < 0:
        raise ValueError(
            f"class_sizes needs num_identities >= 1, 1 <= min <= max, exponent >= 0; "
            f"got {num_identities}, {min_images}, {max_images}, {exponent}"
        )
    ranks = np.arange(1, num_identities + 1, dtype=np.float64)
    by_rank = np.clip(np.round(max_images * ranks**-exponent), min_images, max_images).astype(np.int64)
    return by_rank[np.random.default_rng(seed).permutation(num_identities)]


# --------------------------------------------------------------------------------------------
# random identities and nuisance

_SKIN_LIGHT, _SKIN_DARK = np.array([238.0, 206.0, 182.0]), np.array([92.0, 58.0, 42.0])
_HAIR_PALETTE = np.array(
    [[25, 20, 18], [60, 40, 28], [105, 70, 40], [200, 165, 100], [150, 70, 35], [160, 158, 155], [240, 235, 220]],
    dtype=np.float64,
)
_HAIR_WEIGHTS = np.array([0.3, 0.25, 0.17, 0.1, 0.08, 0.07, 0.03])
_EYE_PALETTE = np.array([[70, 45, 25], [110, 75, 40], [70, 110, 160], [80, 120, 80], [110, 115, 120]], dtype=np.float64)


def _colour(rng: np.random.Generator, base: np.ndarray, jitter: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(base + rng.normal(0, jitter, 3), 0, 255))


def _sample_marks(rng: np.random.Generator, skin: np.ndarray, rx: float, ry: float, cy: float) -> tuple:
    """Identity texture: freckle field, moles and an occasional birthmark, in face coordinates."""
    marks = []
    if rng.random() < 0.35:  # freckles over nose and cheeks
        n = int(rng.integers(8, 30))
        xs = rng.normal(0, 0.45, n)
        ys = rng.normal(0.45, 0.18, n)
        for x, y in zip(xs, ys):
            marks.append((x, y, rng.uniform(0.015, 0.03), *(skin * rng.uniform(0.6, 0.75) * [1.0, 0.85, 0.75])))
    for _ in range(int(rng.poisson(1.5))):  # moles anywhere on the face
        t, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0.05, 0.75))
        marks.append((r * rx * np.cos(t), cy + r * ry * np.sin(t), rng.uniform(0.03, 0.06), *(skin * 0.35)))
    if rng.random() < 0.2:  # birthmark / blotch
        col = skin * rng.uniform(0.7, 0.9) * [1.05, 0.8, 0.8]
        marks.append((rng.uniform(-0.8, 0.8) * rx, cy + rng.uniform(-0.6, 0.6) * ry, rng.uniform(0.08, 0.16), *col))
    return tuple(tuple(float(v) for v in m) for m in marks)


def sample_identity(identity_seed: int) -> ToyIdentity:
    """Random face geometry, colours and texture of one identity, from its seed (deterministic)."""
    rng = np.random.default_rng(identity_seed)
    u = rng.uniform
    face_rx, face_ry, face_cy = u(0.92, 1.25), u(1.35, 1.75), u(0.22, 0.45)
    nose_len = u(0.42, 0.68)
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.beta(1.6, 1.6) + rng.normal(0, [8, 6, 6])
    hair = _HAIR_PALETTE[rng.choice(len(_HAIR_PALETTE), p=_HAIR_WEIGHTS)]
    lips = skin * np.array([0.95, 0.62, 0.62]) + np.array([25.0, 0.0, 5.0]) * u(0.2, 1.5)
    return ToyIdentity(
        seed=int(identity_seed),
        eye_sep=u(0.88, 1.12),
        face_rx=face_rx,
        face_ry=face_ry,
        face_cy=face_cy,
        jaw=u(0.0, 0.45),
        eye_w=u(0.16, 0.25),
        eye_h=u(0.065, 0.12),
        eye_tilt=u(-0.18, 0.18),
        iris=u(0.75, 1.0),
        brow_gap=u(0.17, 0.32),
        brow_arch=u(0.0, 0.1),
        brow_thick=u(0.035, 0.11),
        brow_len=u(0.32, 0.55),
        brow_tilt=u(-0.1, 0.1),
        nose_len=nose_len,
        nose_w=u(0.22, 0.4),
        nose_depth=u(0.2, 0.45),
        mouth_y=nose_len + u(0.35, 0.62),
        mouth_w=u(0.55, 0.95),
        lip_upper=u(0.03, 0.09),
        lip_lower=u(0.04, 0.12),
        mouth_curve=u(-0.05, 0.05),
        ear_size=u(0.22, 0.38),
        ear_y=u(0.1, 0.4),
        hair_top=u(-1.35, -0.65),
        hair_part=u(-0.6, 0.6),
        fringe=u(0.0, 0.5) if rng.random() < 0.6 else 0.0,
        hair_volume=u(0.02, 0.35),
        hair_length=u(0.0, 1.4) if rng.random() < 0.4 else 0.0,
        beard=u(0.3, 0.9) if rng.random() < 0.2 else 0.0,
        skin=_colour(rng, skin, 0.0),
        hair=_colour(rng, hair, 12.0),
        eye_colour=_colour(rng, _EYE_PALETTE[rng.integers(len(_EYE_PALETTE))], 10.0),
        lips=_colour(rng, lips, 6.0),
        marks=_sample_marks(rng, skin, face_rx, face_ry, face_cy),
    )


def _truncnorm(rng: np.random.Generator, std: float, limit: float) -> float:
    return float(np.clip(rng.normal(0.0, std), -limit, limit))


def sample_nuisance(sample_seed: int) -> ToyNuisance:
    """Random pose, expression, illumination, occlusion and degradation of one image."""
    rng = np.random.default_rng(sample_seed)
    u = rng.uniform
    rad = np.deg2rad
    return ToyNuisance(
        yaw=_truncnorm(rng, rad(16), rad(40)),
        pitch=_truncnorm(rng, rad(9), rad(22)),
        roll=_truncnorm(rng, rad(10), rad(30)),
        scale=float(np.exp(u(np.log(0.75), np.log(1.25)))),
        offset=(u(-8, 8), u(-8, 8)),
        smile=u(0, 1) if rng.random() < 0.5 else 0.0,
        mouth_open=u(0.03, 0.3) if rng.random() < 0.3 else 0.0,
        eye_open=0.15 if rng.random() < 0.1 else u(0.6, 1.1),
        gaze=(u(-1, 1), u(-0.5, 0.5)),
        light_angle=u(0, 2 * np.pi),
        light_strength=u(0.0, 0.75),
        gain=u(0.55, 1.35),
        cast=tuple(float(c) for c in np.exp(rng.normal(0, 0.12, 3))),
        background=(_colour(rng, u(0, 255, 3), 0), _colour(rng, u(0, 255, 3), 0)),
        background_blobs=int(rng.integers(0, 4)),
        clothes=_colour(rng, u(0, 255, 3), 0),
        glasses=int(rng.choice(3, p=[0.8, 0.14, 0.06])),
        headwear=int(rng.choice(3, p=[0.86, 0.07, 0.07])),
        bar=bool(rng.random() < 0.08),
        hand=bool(rng.random() < 0.07),
        accessory_colour=_colour(rng, u(0, 255, 3), 0),
        blur_sigma=u(0.4, 2.2) if rng.random() < 0.4 else 0.0,
        noise_sigma=u(0.0, 9.0),
        jpeg_u=u(0, 1),
        seed=int(rng.integers(2**62)),
    )


# --------------------------------------------------------------------------------------------
# rendering


class _Head:
    """Pseudo-3D projection of face coordinates onto the canvas for one identity and pose."""

    def __init__(self, ident: ToyIdentity, nz: ToyNuisance, canvas: int, unit_px: float):
        self.rx, self.ry, self.cy = ident.face_rx, ident.face_ry, ident.face_cy
        self.depth = 0.85 * ident.face_rx
        self.cyaw, self.syaw = math.cos(nz.yaw), math.sin(nz.yaw)
        self.cpitch, self.spitch = math.cos(nz.pitch), math.sin(nz.pitch)
        cr, sr = math.cos(nz.roll), math.sin(nz.roll)
        self.lin = unit_px * np.array([[cr, -sr], [sr, cr]])
        self.unit_px = unit_px
        self.shift = np.zeros(2)
        anchor = self.project(np.array([[0.0, _LANDMARK_ANCHOR_Y]]))[0]
        self.shift = canvas / 2.0 + np.asarray(nz.offset) - anchor

    def surface_z(self, pts: np.ndarray) -> np.ndarray:
        q = 1.0 - (pts[:, 0] / self.rx) ** 2 - ((pts[:, 1] - self.cy) / self.ry) ** 2
        return self.depth * np.sqrt(np.clip(q, 0.0, 1.0))

    def project(self, pts: np.ndarray, dz: float | np.ndarray = 0.0, surface: bool = True) -> np.ndarray:
        """Canvas (x, y) of face points (N, 2); z is the head surface (+dz) or just dz."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        z = (self.surface_z(pts) if surface else 0.0) + dz
        x, y = pts[:, 0], pts[:, 1] - self.cy
        x1 = x * self.cyaw + z * self.syaw
        z1 = -x * self.syaw + z * self.cyaw
        y1 = y * self.cpitch - z1 * self.spitch
        return np.stack([x1, y1], axis=1) @ self.lin.T + self.shift


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 2)


def _fill(img: np.ndarray, pts: np.ndarray, colour) -> None:
    cv2.fillPoly(img, [_fix(pts)], colour, cv2.LINE_AA, _SHIFT)


def _stroke(img: np.ndarray, pts: np.ndarray, colour, thickness: float, closed: bool = False) -> None:
    cv2.polylines(img, [_fix(pts)], closed, colour, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _disc(img: np.ndarray, centre: np.ndarray, radius: float, colour) -> None:
    c = _fix(centre)[0]
    cv2.circle(img, (int(c[0]), int(c[1])), max(1, int(round(radius * _ONE))), colour, -1, cv2.LINE_AA, _SHIFT)


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 24, t0: float = 0.0,
             t1: float = 2 * np.pi) -> np.ndarray:
    """(n, 2) points on an ellipse arc in face coordinates."""
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * np.pi - 1e-9)
    x, y = ax * np.cos(t), ay * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def _strip(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Closed polygon between two curves sampled at the same x positions."""
    return np.vstack([np.stack([xs, top], 1), np.stack([xs, bottom], 1)[::-1]])


def _scaled(colour, k: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, c * k)) for c in colour)


@functools.lru_cache(maxsize=8)
def _grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates scaled to [-1, 1] (float32 (C, C) each)."""
    r = np.linspace(-1.0, 1.0, canvas, dtype=np.float32)
    return np.meshgrid(r, r)


def _ramp(canvas: int, angle: float) -> np.ndarray:
    gx, gy = _grid(canvas)
    return gx * np.float32(math.cos(angle)) + gy * np.float32(math.sin(angle))


def _draw_background(img: np.ndarray, nz: ToyNuisance, rng: np.random.Generator) -> None:
    """Smooth colour field (a 3x3 grid of random colours between the two background colours) and blobs."""
    c = img.shape[0]
    a, b = np.asarray(nz.background)
    grid = a + (b - a) * rng.uniform(0, 1, (3, 3, 1))
    img[:] = cv2.resize(grid.astype(np.uint8), (c, c), interpolation=cv2.INTER_LINEAR)
    for _ in range(nz.background_blobs):
        centre = rng.uniform(0, c, 2)
        axes = rng.uniform(0.1, 0.4, 2) * c
        pts = _ellipse(centre[0], centre[1], axes[0], axes[1], rng.uniform(0, np.pi), n=16)
        _fill(img, pts, _colour(rng, rng.uniform(0, 255, 3), 0))


def _draw_head_back(img: np.ndarray, ident: ToyIdentity, nz: ToyNuisance, head: _Head) -> None:
    """Back hair, clothes, neck and ears: everything the face outline covers."""
    rx, ry, cy = ident.face_rx, ident.face_ry, ident.face_cy
    vol = ident.hair_volume
    if ident.hair_length > 0 or vol > 0.08:
        top = _ellipse(0, cy - 0.1, rx + vol, ry + 0.6 * vol, n=20, t0=np.pi, t1=2 * np.pi)
        low = cy + ident.hair_length * ry
        hair = np.vstack([top, [[rx + vol, low], [-rx - vol, low]]])
        _fill(img, head.project(hair, dz=-0.4, surface=False), ident.hair)
    shoulders = np.array([[-0.45 * rx, cy + ry * 0.9], [0.45 * rx, cy + ry * 0.9], [0.5 * rx, cy + ry + 0.35],
                          [2.6, cy + ry + 0.8], [2.8, cy + ry + 4], [-2.8, cy + ry + 4], [-2.6, cy + ry + 0.8],
                          [-0.5 * rx, cy + ry + 0.35]])
    _fill(img, head.project(shoulders, dz=-0.6, surface=False), nz.clothes)
    neck = np.array([[-0.5 * rx, cy], [0.5 * rx, cy], [0.5 * rx, cy + ry + 0.35], [-0.5 * rx, cy + ry + 0.35]])
    _fill(img, head.project(neck, dz=-0.3, surface=False), _scaled(ident.skin, 0.82))
    for side in (-1, 1):
        ear = _ellipse(side * rx * 0.97, ident.ear_y, 0.45 * ident.ear_size, ident.ear_size, n=12)
        _fill(img, head.project(ear, dz=-0.05, surface=False), _scaled(ident.skin, 0.92))


def _face_outline(ident: ToyIdentity) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    s = np.sin(t)
    taper = 1.0 - ident.jaw * np.clip(s, 0, None) ** 2
    return np.stack([ident.face_rx * np.cos(t) * taper, ident.face_cy + ident.face_ry * s], axis=1)


def _draw_face(img: np.ndarray, ident: ToyIdentity, head: _Head) -> None:
    """Skin, identity marks, beard and front hair."""
    rx, ry, cy = ident.face_rx, ident.face_ry, ident.face_cy
    _fill(img, head.project(_face_outline(ident)), ident.skin)
    for x, y, r, *col in ident.marks:
        _disc(img, head.project(np.array([[x, y]]), dz=0.01), r * head.unit_px, col)
    if ident.beard > 0:
        t = np.linspace(0.05 * np.pi, 0.95 * np.pi, 16)
        outer = np.stack([rx * 0.92 * np.cos(t) * (1 - ident.jaw * np.sin(t) ** 2), cy + ry * 0.97 * np.sin(t)], 1)
        my = ident.mouth_y
        inner = np.array([[0.7 * rx, my - 0.25], [0.0, my - 0.2], [-0.7 * rx, my - 0.25]])
        beard_col = tuple(s + (h - s) * ident.beard for s, h in zip(ident.skin, ident.hair))
        _fill(img, head.project(np.vstack([outer, inner]), dz=0.02), beard_col)
    # front hair: from the hairline up over the top of the head
    xs = np.linspace(-rx * 1.02, rx * 1.02, 21)
    uu = np.abs(xs / rx)
    parting = 1.0 - np.exp(-(((xs - ident.hair_part) / 0.18) ** 2))
    hairline = ident.hair_top + (-0.05 - ident.hair_top) * uu**4 + ident.fringe * parting * (1 - uu**2)
    vol = ident.hair_volume
    top = _ellipse(0, cy - 0.1, rx * 1.02 + vol * 0.8, ry + vol * 0.5, n=20, t0=0.0, t1=-np.pi)
    top = top[top[:, 1] < -0.05]
    front = np.vstack([np.stack([xs, hairline], 1), top])
    _fill(img, head.project(front, dz=0.03), ident.hair)


def _draw_eyes(img: np.ndarray, ident: ToyIdentity, nz: ToyNuisance, head: _Head, eyes: np.ndarray) -> None:
    brow_col = _scaled(ident.hair, 0.85) if sum(ident.hair) < 450 else _scaled(ident.hair, 0.6)
    lash = _scaled(ident.skin, 0.3)
    openness = ident.eye_h * nz.eye_open
    for side, (ex, ey) in zip((-1, 1), eyes):
        tilt = -side * ident.eye_tilt
        u = np.linspace(-1, 1, 7)
        brow = np.stack([ex + side * u * ident.brow_len / 2,
                         ey - ident.brow_gap - ident.brow_arch * (1 - u**2) - ident.brow_tilt * u], 1)
        _stroke(img, head.project(brow, dz=0.02), brow_col, ident.brow_thick * head.unit_px)
        if nz.eye_open < 0.3:  # closed: a lash line only
            _stroke(img, head.project(_ellipse(ex, ey, ident.eye_w, openness, tilt, 9, 0, np.pi)), lash, 1.5)
            continue
        _fill(img, head.project(_ellipse(ex, ey, ident.eye_w, openness, tilt, 16)), (236, 232, 226))
        r_iris = min(ident.iris * ident.eye_h, openness, 0.6 * ident.eye_w)
        centre = head.project(np.array([[ex + nz.gaze[0] * 0.3 * ident.eye_w, ey + nz.gaze[1] * 0.2 * openness]]))
        _disc(img, centre, r_iris * head.unit_px, ident.eye_colour)
        _disc(img, centre, 0.45 * r_iris * head.unit_px, (15, 12, 12))
        upper = _ellipse(ex, ey, ident.eye_w, openness, tilt, 11, np.pi, 2 * np.pi)
        _stroke(img, head.project(upper), lash, 0.03 * head.unit_px)


def _draw_nose(img: np.ndarray, ident: ToyIdentity, nz: ToyNuisance, head: _Head) -> np.ndarray:
    """Nose shading and nostrils; returns the canvas position of the nose tip."""
    nl, nw, nd = ident.nose_len, ident.nose_w, ident.nose_depth
    side = 1.0 if math.cos(nz.light_angle) < 0 else -1.0  # shadow on the side away from the light
    bridge = np.array([[side * 0.1, 0.05], [side * nw * 0.38, nl * 0.6], [side * nw * 0.5, nl - 0.04]])
    _stroke(img, head.project(bridge, dz=nd * bridge[:, 1] / nl * 0.7), _scaled(ident.skin, 0.75), 0.03 * head.unit_px)
    base = _ellipse(0, nl - 0.02, nw * 0.5, 0.08, 0, 9, 0.1 * np.pi, 0.9 * np.pi)
    _stroke(img, head.project(base, dz=nd * 0.6), _scaled(ident.skin, 0.7), 0.025 * head.unit_px)
    for s in (-1, 1):
        nostril = _ellipse(s * nw * 0.3, nl + 0.02, nw * 0.14, 0.04, s * 0.3, 8)
        _fill(img, head.project(nostril, dz=nd * 0.45), _scaled(ident.skin, 0.42))
    return head.project(np.array([[0.0, nl]]), dz=nd)[0]


def _draw_mouth(img: np.ndarray, ident: ToyIdentity, nz: ToyNuisance, head: _Head) -> np.ndarray:
    """Lips with smile and opening; returns the canvas mouth corners (left, right)."""
    half = ident.mouth_w / 2 * (1 + 0.1 * nz.smile)
    raise_ = 0.1 * nz.smile + ident.mouth_curve
    u = np.linspace(-1, 1, 13)
    xs = u * half
    bulge = np.sqrt(1 - u**2)
    mid = ident.mouth_y - raise_ * u**2
    bow = 0.35 * ident.lip_upper * np.exp(-((u / 0.12) ** 2))
    top = mid - ident.lip_upper * bulge - nz.mouth_open * 0.3 * bulge + bow
    inner_low = mid + nz.mouth_open * bulge
    bottom = inner_low + ident.lip_lower * bulge
    _fill(img, head.project(_strip(xs, top, bottom), dz=0.04), ident.lips)
    if nz.mouth_open > 0:
        upper_inner = mid - nz.mouth_open * 0.3 * bulge
        _fill(img, head.project(_strip(xs, upper_inner, inner_low), dz=0.04), (55, 18, 22))
        teeth_low = upper_inner + 0.5 * (inner_low - upper_inner) * np.clip(nz.mouth_open / 0.15, 0, 1)
        _fill(img, head.project(_strip(xs * 0.8, upper_inner, teeth_low), dz=0.04), (235, 232, 220))
    else:
        _stroke(img, head.project(np.stack([xs, mid], 1), dz=0.04), _scaled(ident.lips, 0.5), 0.02 * head.unit_px)
    return head.project(np.array([[-half, ident.mouth_y - raise_], [half, ident.mouth_y - raise_]]), dz=0.04)


def _draw_occluders(img: np.ndarray, ident: ToyIdentity, nz: ToyNuisance, head: _Head, eyes: np.ndarray,
                    rng: np.random.Generator) -> None:
    rx, ry, cy = ident.face_rx, ident.face_ry, ident.face_cy
    col = nz.accessory_colour
    if nz.headwear == 1:  # hair band across the forehead
        y0 = rng.uniform(-1.1, -0.7)
        xs = np.linspace(-rx * 1.05, rx * 1.05, 11)
        _fill(img, head.project(_strip(xs, np.full_like(xs, y0), np.full_like(xs, y0 + 0.16)), dz=0.05), col)
    elif nz.headwear == 2:  # hat: crown and brim
        brim_y = rng.uniform(-0.95, -0.55)
        crown = _ellipse(0, brim_y, rx + 0.15, ry * 0.9, n=16, t0=np.pi, t1=2 * np.pi)
        _fill(img, head.project(crown, dz=0.1, surface=False), col)
        brim = np.array([[-rx - 0.45, brim_y - 0.06], [rx + 0.45, brim_y - 0.06], [rx + 0.45, brim_y + 0.08],
                         [-rx - 0.45, brim_y + 0.08]])
        _fill(img, head.project(brim, dz=0.6, surface=False), _scaled(col, 0.8))
    if nz.glasses:
        frame = _scaled(col, 0.35)
        lens_w, lens_h = rng.uniform(0.26, 0.36), rng.uniform(0.17, 0.26)
        round_lens = rng.random() < 0.5
        thick = rng.uniform(0.025, 0.07) * head.unit_px
        for ex, ey in eyes:
            if round_lens:
                lens = _ellipse(ex, ey, lens_w, lens_h, 0, 20)
            else:
                lens = np.array([[ex - lens_w, ey - lens_h], [ex + lens_w, ey - lens_h], [ex + lens_w, ey + lens_h],
                                 [ex - lens_w, ey + lens_h]])
            proj = head.project(lens, dz=0.15)
            if nz.glasses == 2:
                _fill(img, proj, _scaled(col, 0.15))
            _stroke(img, proj, frame, thick, closed=True)
        left, right = eyes[0, 0] + lens_w, eyes[1, 0] - lens_w
        _stroke(img, head.project(np.array([[left, eyes[0, 1]], [right, eyes[1, 1]]]), dz=0.15), frame, thick)
        for s, (ex, ey) in zip((-1, 1), eyes):
            arm = np.array([[ex + s * lens_w, ey - 0.05], [s * rx * 0.99, ey - 0.05]])
            _stroke(img, head.project(arm, dz=0.15), frame, thick)
    if nz.hand:
        hx, hy = rng.uniform(-0.8, 0.8), rng.uniform(0.6, 1.7)
        skin = _scaled(ident.skin, rng.uniform(0.85, 1.1))
        palm = _ellipse(hx, hy + 0.25, 0.42, 0.5, rng.uniform(-0.5, 0.5), 14)
        _fill(img, head.project(palm, dz=0.7, surface=False), skin)
        for k in range(4):
            fx = hx - 0.3 + 0.2 * k
            finger = np.array([[fx, hy], [fx + rng.uniform(-0.1, 0.1), hy - rng.uniform(0.35, 0.55)]])
            _stroke(img, head.project(finger, dz=0.7, surface=False), skin, 0.15 * head.unit_px)
    if nz.bar:
        c = img.shape[0]
        centre, angle = rng.uniform(0.3, 0.7, 2) * c, rng.uniform(0, np.pi)
        length, width = rng.uniform(0.5, 1.0) * c, rng.uniform(0.03, 0.09) * c
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        corners = centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) @ np.stack([d * length / 2, n * width / 2])
        _fill(img, corners, _scaled(col, 0.7))


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of standard normal noise (2*size square); images take random crops of it.

    Drawing fresh normals per image costs more than the rest of the rendering, and noise that is
    shared by all identities carries no identity information.
    """
    return np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


def _photograph(img: np.ndarray, nz: ToyNuisance, rng: np.random.Generator) -> np.ndarray:
    """Illumination (directional gradient, gain, colour cast), blur and sensor noise; uint8 out.

    Applied to the aligned crop: these are pointwise or local, so they commute with the
    similarity warp up to resampling, and the crop has fewer pixels than the canvas.
    """
    c = img.shape[0]
    light = (np.float32(nz.gain) * (1.0 + np.float32(nz.light_strength) * _ramp(c, nz.light_angle)))[..., None]
    out = img.astype(np.float32) * light * np.asarray(nz.cast, dtype=np.float32)
    if nz.blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), nz.blur_sigma * c / TEMPLATE_SIZE)
    if nz.noise_sigma > 0:
        oy, ox = rng.integers(0, c, 2)
        out += _noise_bank(c)[oy : oy + c, ox : ox + c] * np.float32(nz.noise_sigma)
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_scene(
    identity: ToyIdentity, nuisance: ToyNuisance, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    canvas = int(round(size * _CANVAS_FACTOR))
    unit_px = _TEMPLATE_IOD * size / TEMPLATE_SIZE * nuisance.scale
    img = np.empty((canvas, canvas, 3), dtype=np.uint8)
    head = _Head(identity, nuisance, canvas, unit_px)
    eyes = np.array([[-identity.eye_sep / 2, 0.0], [identity.eye_sep / 2, 0.0]])
    _draw_background(img, nuisance, rng)
    _draw_head_back(img, identity, nuisance, head)
    _draw_face(img, identity, head)
    _draw_eyes(img, identity, nuisance, head, eyes)
    nose = _draw_nose(img, identity, nuisance, head)
    mouth = _draw_mouth(img, identity, nuisance, head)
    _draw_occluders(img, identity, nuisance, head, eyes, rng)
    landmarks = np.vstack([head.project(eyes), nose[None], mouth]).astype(np.float32)
    return img, landmarks


def render_canvas(identity: ToyIdentity, nuisance: ToyNuisance, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """The unaligned scene before photometric nuisance (RGB uint8, side ``1.5 * size``) and its
    exact landmarks, float32 (5, 2). For inspection; :func:`render_sample` is the dataset path."""
    return _draw_scene(identity, nuisance, size, np.random.default_rng(nuisance.seed))


def _render_aligned(identity: ToyIdentity, nuisance: ToyNuisance, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(nuisance.seed)
    scene, landmarks = _draw_scene(identity, nuisance, size, rng)
    aligned, aligned_landmarks = align_face(scene, landmarks, size)
    return _photograph(aligned, nuisance, rng), aligned_landmarks


def render_sample(identity: ToyIdentity, sample_seed: int, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """One aligned image of ``identity``: (RGB uint8 (size, size, 3), aligned landmarks float32 (5, 2)).

    Deterministic in (identity, sample_seed, size); the nuisance comes from ``sample_seed``.
    """
    return _render_aligned(identity, sample_nuisance(sample_seed), size)


# --------------------------------------------------------------------------------------------
# datasets


def _jpeg_quality(nuisance: ToyNuisance, quality_range: tuple[int, int]) -> int:
    lo, hi = quality_range
    return int(lo + math.floor(nuisance.jpeg_u * (hi - lo + 1)))


def _encoded_sample(identity: ToyIdentity, sample_seed: int, config: ToyFaceConfig) -> tuple[bytes, np.ndarray]:
    """JPEG bytes (per-sample quality) and aligned landmarks of one toy image."""
    nuisance = sample_nuisance(sample_seed)
    aligned, lm = _render_aligned(identity, nuisance, config.image_size)
    return encode_image(aligned, "jpg", _jpeg_quality(nuisance, config.jpeg_quality)), lm


def iter_toy_records(config: ToyFaceConfig, identity_indices: Sequence[int], split: str = "train") -> Iterator[dict]:
    """Shard records of the given identities of ``split``; a pure function of (config, indices, split).

    Identity ``i`` gets ``class_sizes(...)[i]`` images; label ``i``; identity ``toy_{split}_{i:06d}``.
    """
    sizes = class_sizes(config.num_identities, config.min_images, config.max_images, config.seed, config.tail_exponent)
    for index in identity_indices:
        if not 0 <= index < config.num_identities:
            raise ValueError(f"identity index {index} outside [0, {config.num_identities}) of the toy config")
        id_seed = toy_identity_seed(config.seed, int(index), split)
        identity = sample_identity(id_seed)
        for j in range(int(sizes[index])):
            image, lm = _encoded_sample(identity, toy_sample_seed(id_seed, j), config)
            yield {
                "image": image,
                "label": int(index),
                "identity": f"toy_{split}_{int(index):06d}",
                "landmarks": lm.reshape(-1),
                "source": "real",
            }


def make_verification_pairs(
    config: ToyFaceConfig, num_identities: int, num_pairs: int, seed: int, hard_fraction: float = 0.3
) -> tuple[list[bytes], np.ndarray]:
    """Verification pairs of held-out ("verify") identities, insightface ``.bin`` layout.

    Returns 2 * num_pairs JPEG images (pair i = images 2i, 2i+1) and ``issame`` (bool,
    num_pairs // 2 True, in a shuffled order). Genuine pairs: two different images of one
    identity; impostors: two identities, a ``hard_fraction`` of them look-alikes (one of the
    three nearest identities in parameter space).
    """
    if num_identities < 4 or num_pairs < 1 or not 0 <= hard_fraction <= 1:
        raise ValueError(
            f"need num_identities >= 4, num_pairs >= 1, 0 <= hard_fraction <= 1; "
            f"got {num_identities}, {num_pairs}, {hard_fraction}"
        )
    rng = np.random.default_rng([seed, config.seed])
    id_seeds = [toy_identity_seed(config.seed, i, "verify") for i in range(num_identities)]
    identities = [sample_identity(s) for s in id_seeds]
    vectors = np.stack([ident.vector() for ident in identities])
    vectors = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-9)
    issame = np.zeros(num_pairs, dtype=bool)
    issame[: num_pairs // 2] = True
    rng.shuffle(issame)
    images: list[bytes] = []
    for same in issame:
        a = int(rng.integers(num_identities))
        if same:
            b = a
        elif rng.random() < hard_fraction:
            dist = np.sum((vectors - vectors[a]) ** 2, axis=1)
            dist[a] = np.inf
            b = int(rng.choice(np.argsort(dist)[:3]))
        else:
            b = int((a + rng.integers(1, num_identities)) % num_identities)
        j1, j2 = rng.choice(2**31, size=2, replace=False)
        for ident, j in ((a, j1), (b, j2)):
            images.append(_encoded_sample(identities[ident], toy_sample_seed(id_seeds[ident], int(j)), config)[0])
    return images, issame


def render_aligned(identity: ToyIdentity, nuisance: ToyNuisance, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """One aligned image from explicit identity and nuisance parameters (RGB uint8, landmarks float32 (5, 2)):
    the hook of SynthDistill's toy generator (``distill.toy_generator``), which builds both from a latent."""
    return _render_aligned(identity, nuisance, size)
