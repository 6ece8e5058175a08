"""CR-FIQA: face image quality as a sample's relative classifiability (Boutros et al., CVPR 2023).

VIGFace scores dataset diversity with normalised CR-FIQA scores (its eq. 10-11). During FR
training, each sample's certainty ratio CR = CCS / (NNCCS + 1 + eps) is computed from the
margin-free cosine logits, where CCS is the cosine to the sample's own class centre and NNCCS the
largest cosine to any other centre. A small regression head on the embedding learns to predict
CR (smooth L1 against the detached CR); at test time its output is the quality score. Total loss:
FR loss + lambda * quality loss (lambda = 10 in CR-FIQA).

The sharded (partial-FC) head computes CCS / NNCCS with all-reduces and calls
:func:`certainty_ratio`; :func:`ccs_nnccs` is the single-process, full-head version.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fr.heads import certainty_scores

DEFAULT_QUALITY_WEIGHT = 10.0  # lambda in CR-FIQA


def certainty_ratio(ccs: torch.Tensor, nnccs: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """CR = CCS / (NNCCS + 1 + eps)  # CR-FIQA certainty ratio; ``+1`` keeps the denominator >= 0 (NNCCS >= -1).

    Evaluated as ``(NNCCS + 1) + eps`` so eps still counts in float32 (where ``1 + 1e-9 == 1``).
    """
    if ccs.shape != nnccs.shape:
        raise ValueError(f"certainty_ratio: ccs shape {tuple(ccs.shape)} != nnccs shape {tuple(nnccs.shape)}")
    return ccs / ((nnccs + 1.0) + eps)


def ccs_nnccs(cosine_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-centre similarity and nearest negative class-centre similarity, each [B].

    ``cosine_logits`` [B, C]: cos(embedding, centre_c) before any margin or scale; ``labels`` [B]
    class indices. CCS = cos to the own centre; NNCCS = max cos over the other C-1 centres.
    """
    if cosine_logits.ndim != 2:
        raise ValueError(f"ccs_nnccs: cosine_logits must be [B, C], got shape {tuple(cosine_logits.shape)}")
    batch, classes = cosine_logits.shape
    if classes < 2:
        raise ValueError(f"ccs_nnccs: need at least 2 classes for a negative centre, got C={classes}")
    if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"ccs_nnccs: labels must be an integer tensor of shape ({batch},), got {tuple(labels.shape)} {labels.dtype}"
        )
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"ccs_nnccs: labels must lie in [0, {classes}), got range [{low}, {high}]")
    return certainty_scores(cosine_logits, labels.long())  # one implementation, shared with the heads (detached)


def crfiqa_targets(cosine_logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Detached CR regression targets [B] from margin-free cosine logits (full-head case)."""
    with torch.no_grad():
        return certainty_ratio(*ccs_nnccs(cosine_logits, labels), eps=eps)


class QualityHead(nn.Module):
    """Linear regressor from the backbone embedding [B, E] to a predicted CR [B]."""

    def __init__(self, embedding_size: int = 512) -> None:
        super().__init__()
        self.embedding_size = int(embedding_size)
        self.fc = nn.Linear(self.embedding_size, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_size:
            raise ValueError(
                f"QualityHead: expected embeddings of shape (B, {self.embedding_size}), got {tuple(embedding.shape)}"
            )
        return self.fc(embedding).squeeze(1)


def quality_loss(pred: torch.Tensor, target_cr: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 between predicted and (detached) target CR, mean over the batch  # CR-FIQA regression loss."""
    pred = pred.reshape(-1)
    target = target_cr.detach().reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"quality_loss: {pred.numel()} predictions but {target.numel()} targets")
    return F.smooth_l1_loss(pred, target.to(pred.dtype), beta=beta)


def crfiqa_total_loss(
    fr_loss: torch.Tensor,
    pred: torch.Tensor,
    target_cr: torch.Tensor,
    weight: float = DEFAULT_QUALITY_WEIGHT,
) -> torch.Tensor:
    """FR loss + lambda * quality loss  # CR-FIQA training objective (lambda = ``weight``)."""
    if weight < 0:
        raise ValueError(f"crfiqa_total_loss: weight (lambda) must be >= 0, got {weight!r}")
    return fr_loss + weight * quality_loss(pred, target_cr)
