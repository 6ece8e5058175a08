"""Verification of teacher and students on the same ``.bin`` pairs (the shape of SynthDistill's Table 3),
and the step-1 / re-sampled sample grid."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from distill.latent_generator import LatentGenerator, seeded_generator
from distill.resampling import agreement, resampled_w

Embed01 = Callable[[torch.Tensor], torch.Tensor]  # float faces [B, 3, H, W] in [0, 1] -> embeddings


def load_pairs(bins: Sequence[str | Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB uint8 images [2N, H, W, 3], issame [N]) of each ``.bin`` (restricted unpickler)."""
    from fr.data.binfile import load_bin
    from fr.data.images import decode_image

    out = []
    for path in bins:
        images, issame = load_bin(path)
        out.append((Path(path).stem, np.stack([decode_image(b) for b in images]), np.asarray(issame)))
    return out


def verify(embed01: Embed01, pairs: list[tuple[str, np.ndarray, np.ndarray]], batch_size: int = 128,
           prefix: str = "") -> dict[str, float]:
    """10-fold accuracy (flip test), AUC, TAR@FAR of ``embed01`` on every pair set: ``<prefix><name>_<metric>``."""
    from evaluation.verification import PIXEL_MEAN, PIXEL_SCALE, evaluate_pairs

    def embed_fn(x: torch.Tensor) -> torch.Tensor:  # evaluate_pairs normalises to (x - 127.5) / 128
        return embed01((x * PIXEL_SCALE + PIXEL_MEAN) / 255.0)

    out: dict[str, float] = {}
    for name, images, issame in pairs:
        result = evaluate_pairs(embed_fn, images, issame, batch_size=batch_size, flip=True)
        out.update(result.to_metrics(f"{prefix}{name}_"))
    return out


def module_embed01(model: torch.nn.Module, device: torch.device | str = "cpu") -> Embed01:
    """A student as an embedding function (eval mode, no gradient)."""

    @torch.no_grad()
    def fn(x01: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        out = model(x01.to(device)).float().cpu()
        model.train(was)
        return out

    return fn


@torch.no_grad()
def resample_grid(gen: LatentGenerator, teacher, student: torch.nn.Module, mode: str, c: float, n: int,
                  seed: int, device: torch.device | str = "cpu") -> np.ndarray:
    """Two rows of ``n`` faces: fresh step-1 faces and their re-sampled versions (``w + c s n`` with the current
    student's agreement; ``static`` modes: a second fresh batch). RGB uint8 [2 S, n S, 3]."""
    z = gen.sample_latents(n, seed)
    w = gen.to_w(z)
    x1 = gen.synthesize(w)
    if mode.startswith("dynamic"):
        s = agreement(teacher(x1.to(device)), module_embed01(student, device)(x1)).cpu()
        w2, _ = resampled_w(gen, mode, z, w, s, c, seeded_generator(seed + 1))
    else:
        w2 = gen.to_w(gen.sample_latents(n, seed + 1))
    x2 = gen.synthesize(w2)
    rows = [torch.cat(list(x), dim=2) for x in (x1, x2)]  # [3, S, n S]
    return (torch.cat(rows, dim=1).permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def agreement_histogram_png(cosines: np.ndarray, path: str | Path, title: str) -> Path:
    """Histogram of cos(e_T, e_S) over an epoch's fresh batches (before each update)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(np.asarray(cosines, dtype=np.float64), bins=50, range=(-1, 1), color="#3a6ea5")
    ax.set_xlabel("cos(e_T, e_S), step 1 (pre-update)")
    ax.set_ylabel("faces")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
