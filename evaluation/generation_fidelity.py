"""Identity fidelity of generated faces: does each image embed near the prototype it was sampled from?

For every generated image ``i`` conditioned on prototype row ``p_i``, the FR cosine to its own
prototype ``cos(e_i, w_{p_i})`` is compared with its cosines to all other prototype rows; the image
is identified correctly (top-1) when its own row is the nearest one. Results are summarised
separately for images of real rows (``p_i < num_real``) and virtual rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fr.data.images import to_model_input

KINDS = ("real", "virtual")


class FidelityInputError(ValueError):
    """Embeddings, prototype rows and prototypes that do not fit together."""


@torch.no_grad()
def embed_uint8(backbone: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised float32 embeddings [N, D] of uint8 RGB faces [N, H, W, 3] (backbone in eval mode)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise FidelityInputError(f"embed_uint8: images must be uint8 [N, H, W, 3], got {arr.dtype} {arr.shape}")
    if batch_size < 1:
        raise FidelityInputError(f"embed_uint8: batch_size must be >= 1, got {batch_size}")
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    try:
        parts = [backbone(to_model_input(arr[i:i + batch_size]).to(device)).float().cpu()
                 for i in range(0, len(arr), batch_size)]
    finally:
        backbone.train(was_training)
    return F.normalize(torch.cat(parts), dim=1) if parts else torch.zeros(0, 0)


def read_generated_shards(directory: str | Path, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Decoded faces uint8 [N, S, S, 3] and labels [N] of every shard of a generated dataset directory."""
    from evaluation.embed import read_shard_faces
    from fr.data.shards import list_shards

    paths = list_shards(directory)
    if not paths:
        raise FidelityInputError(f"read_generated_shards: no shards in {directory}")
    faces, labels = zip(*(read_shard_faces(p, image_size) for p in paths))
    return np.concatenate(faces), np.concatenate(labels)


def _check(embeddings: torch.Tensor, proto_rows: torch.Tensor, prototypes: torch.Tensor, num_real: int) -> None:
    if embeddings.ndim != 2 or prototypes.ndim != 2 or embeddings.shape[1] != prototypes.shape[1]:
        raise FidelityInputError(f"embeddings {tuple(embeddings.shape)} and prototypes {tuple(prototypes.shape)} "
                                 "must be [N, D] and [P, D] with the same D")
    if proto_rows.shape != (embeddings.shape[0],):
        raise FidelityInputError(f"proto_rows must be [N={embeddings.shape[0]}], got {tuple(proto_rows.shape)}")
    if prototypes.shape[0] < 2:
        raise FidelityInputError(f"need at least 2 prototype rows to compare against others, got {prototypes.shape[0]}")
    if not 0 <= num_real <= prototypes.shape[0]:
        raise FidelityInputError(f"num_real {num_real} outside [0, {prototypes.shape[0]}]")
    if len(proto_rows) and (int(proto_rows.min()) < 0 or int(proto_rows.max()) >= prototypes.shape[0]):
        raise FidelityInputError(f"proto_rows must lie in [0, {prototypes.shape[0]}), got "
                                 f"[{int(proto_rows.min())}, {int(proto_rows.max())}]")


def own_other_cosines(embeddings: torch.Tensor, proto_rows: torch.Tensor, prototypes: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """Per image [N]: cosine to its own prototype, mean and max cosine to every other row, top-1 hit."""
    sims = F.normalize(embeddings.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T  # [N, P]
    idx = torch.arange(len(sims))
    own = sims[idx, proto_rows]
    others = sims.clone()
    others[idx, proto_rows] = float("-inf")
    other_max = others.max(dim=1).values
    other_mean = (sims.sum(dim=1) - own) / (sims.shape[1] - 1)
    return {"own": own, "other_mean": other_mean, "other_max": other_max, "top1": (own > other_max).float()}


def prototype_fidelity(embeddings: torch.Tensor | np.ndarray, proto_rows: torch.Tensor | np.ndarray,
                       prototypes: torch.Tensor | np.ndarray, num_real: int) -> dict[str, dict[str, float]]:
    """Fidelity summary per kind ('real', 'virtual', 'all'), each a dict with ``count``,
    ``own_cos`` (mean cosine to the own prototype), ``other_cos`` (mean over images of the mean cosine to
    every other prototype row), ``other_max_cos`` (mean of the max), ``top1`` (fraction whose nearest
    prototype row is their own; a tie counts as a miss). A kind without images gets ``count`` 0 and NaNs.
    ``chance_top1`` is 1 / number of prototype rows.
    """
    emb, protos = torch.as_tensor(embeddings), torch.as_tensor(prototypes)
    rows = torch.as_tensor(np.asarray(proto_rows), dtype=torch.long)
    _check(emb, rows, protos, num_real)
    per = own_other_cosines(emb, rows, protos)
    masks = {"real": rows < num_real, "virtual": rows >= num_real, "all": torch.ones_like(rows, dtype=torch.bool)}
    out: dict[str, dict[str, float]] = {}
    for kind, m in masks.items():
        n = int(m.sum())
        mean = (lambda v: float(v[m].mean())) if n else (lambda v: float("nan"))
        out[kind] = {"count": n, "own_cos": mean(per["own"]), "other_cos": mean(per["other_mean"]),
                     "other_max_cos": mean(per["other_max"]), "top1": mean(per["top1"]),
                     "chance_top1": 1.0 / protos.shape[0]}
    return out


def format_fidelity(summary: dict[str, dict[str, float]], title: str = "") -> str:
    """A small text table of a ``prototype_fidelity`` summary."""
    lines = [title] if title else []
    lines.append(f"{'kind':8s} {'n':>5s} {'own_cos':>8s} {'other':>8s} {'oth_max':>8s} {'top1':>6s}")
    for kind, s in summary.items():
        lines.append(f"{kind:8s} {s['count']:5d} {s['own_cos']:8.3f} {s['other_cos']:8.3f} "
                     f"{s['other_max_cos']:8.3f} {s['top1']:6.3f}")
    return "\n".join(lines)
