"""Verification of an FR backbone on ``.bin`` benchmarks: 10-fold accuracy with the flip test, TAR@FAR,
and (optionally) the ROC and genuine/impostor histogram PNGs. Used during FR training and by ``evaluate``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.plots import plot_roc, plot_similarity_histogram
from evaluation.verification import embed_images, evaluate_similarities, pair_similarities


def verification_sets(paths: list[str] | list[Path]) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Benchmark name (file stem) -> (decoded images, is-same flags) for every ``.bin`` in ``paths``."""
    from fr.data.binfile import load_bin
    from fr.data.images import decode_image

    out = {}
    for p in paths:
        images, issame = load_bin(p)
        out[Path(p).stem] = ([decode_image(b) for b in images], issame)
    return out


def evaluate_backbone(backbone: torch.nn.Module, sets: dict, device: torch.device, batch_size: int = 128,
                      plot_dir: Path | None = None) -> dict[str, Any]:
    """10-fold verification (flip test) on every set; returns metrics (and ROC/histogram PNGs)."""
    was_training = backbone.training
    backbone.eval()

    def embed_fn(x: torch.Tensor) -> torch.Tensor:
        return backbone(x.to(device)).float().cpu()

    metrics, curves = {}, {}
    for name, (images, issame) in sets.items():
        sims = pair_similarities(embed_images(embed_fn, images, batch_size=batch_size, flip=True))  # embed once
        result = evaluate_similarities(sims, issame)
        metrics.update(result.to_metrics(f"verify/{name}/"))
        curves[name] = (result.fpr, result.tpr, result.auc)
        if plot_dir is not None:
            plot_similarity_histogram(sims, issame, plot_dir / f"similarity_hist_{name}.png",
                                      title=f"{name}: genuine vs impostor cosine")
    if plot_dir is not None and curves:
        plot_roc(curves, plot_dir / "roc.png")
    backbone.train(was_training)
    return metrics
