"""Full (single-device) softmax classifier head with a margin and VIGFace virtual prototypes.

Shared pieces used by the sharded head (:mod:`fr.partial_fc`) live here too: the split-independent
weight initialisation, label validation, the CR-FIQA certainty scores and :class:`HeadOutput`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fr.virtual_prototypes import SigmaEMA, sample_virtual_embeddings, virtual_batch_size

INIT_STD = 0.01
RNG_STATE_KEY = "virtual_rng_state"
_INIT_BLOCK = 4096  # rows per independently seeded init block


@dataclass
class HeadOutput:
    """What a classifier head returns for one batch.

    ``loss``: the head's training loss (for the margin heads the mean cross-entropy over the real and
    the virtual embeddings, VIGFace's aggregate loss).
    ``ccs`` / ``nnccs``: per real sample of this batch (this rank's rows for the sharded head), the
    cosine to its own class centre and the largest cosine to any other centre, taken before the
    margin and detached (CR-FIQA's certainty ratio is ``ccs / (nnccs + 1 + eps)``); ``None`` for a head
    without class centres.
    ``num_virtual_samples``: virtual embeddings added this step (over all ranks).
    ``metrics``: extra scalars to log (detached tensors or floats), e.g. per-token losses.
    """

    loss: Tensor
    ccs: Tensor | None = None
    nnccs: Tensor | None = None
    num_virtual_samples: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


class ClassifierHead(nn.Module):
    """The interface of every FR classifier head; the FR train step and checkpoints use only this.

    A head maps ``(embeddings [B, d], labels [B])`` to a :class:`HeadOutput`. Checkpoints are world-size
    independent: :meth:`full_state_dict` returns the same full state on every rank (a collective for a
    sharded head, so every rank calls it) and :meth:`load_full_state_dict` restores it at any world
    size; :meth:`gather_param` / :meth:`local_param` do the same for optimizer state shaped like a
    parameter. :meth:`export` writes what later stages read (e.g. the prototype matrix).
    A new head is one subclass plus one line in :data:`fr.head_registry.HEADS`.
    """

    provides_centres: bool = True  # fills ccs/nnccs (CR-FIQA needs them)

    def full_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def gather_param(self, name: str, local: Tensor) -> Tensor:
        """The full tensor of parameter ``name``'s shape from this rank's part (unsharded: itself)."""
        return local.detach().clone()

    def local_param(self, name: str, full: Tensor) -> Tensor:
        """This rank's part of a full tensor shaped like parameter ``name``."""
        return full.clone()

    def export(self, out_dir: Path, identities: list[str], meta: dict[str, Any]) -> dict[str, Path]:
        """Files later stages need from the trained head; none by default."""
        return {}


def init_prototype_rows(start: int, end: int, dim: int, seed: int, std: float = INIT_STD) -> Tensor:
    """Rows ``[start, end)`` of an ``N(0, std^2)`` prototype matrix, the same whatever the split.

    Each block of 4096 rows comes from its own generator seeded by ``(seed, block)``, so a shard only
    draws the blocks it overlaps and every world size starts from identical weights.
    """
    if not 0 <= start <= end or dim <= 0:
        raise ValueError(f"init_prototype_rows: bad range [{start}, {end}) or dim {dim}")
    first, last = start // _INIT_BLOCK, (end + _INIT_BLOCK - 1) // _INIT_BLOCK
    blocks = []
    for block in range(first, last):
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + block) % (2**63))
        blocks.append(torch.randn((_INIT_BLOCK, dim), generator=gen) * std)
    rows = torch.cat(blocks) if blocks else torch.empty((0, dim))
    offset = start - first * _INIT_BLOCK
    return rows[offset : offset + end - start].contiguous()


def validate_labels(labels: Tensor, num_real: int, batch: int, where: str) -> None:
    """Raise ``ValueError`` unless ``labels`` is a long ``[batch]`` tensor of real classes ``[0, num_real)``."""
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"{where}: labels must have shape [{batch}], got {tuple(labels.shape)}")
    if labels.dtype != torch.long:
        raise ValueError(f"{where}: labels must be int64 (long), got {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_real)]
    if bad.numel():
        raise ValueError(f"{where}: label {int(bad[0])} outside the real classes [0, {num_real})")


def certainty_scores(cosine: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(ccs, nnccs)`` from a pre-margin cosine matrix, detached.

    ``ccs[i] = cosine[i, labels[i]]`` and ``nnccs[i]`` is the max over the other columns; rows with
    label -1 (target not in these columns) get ``ccs = -inf``, and a row with no other column gets
    ``nnccs = -inf`` (neutral under a max-all-reduce across shards).
    """
    cosine = cosine.detach()
    has = labels >= 0
    safe = labels.clamp(min=0).unsqueeze(1)
    neg_inf = torch.full_like(cosine[:, 0], float("-inf"))
    ccs = torch.where(has, cosine.gather(1, safe).squeeze(1), neg_inf)
    is_target = torch.zeros_like(cosine, dtype=torch.bool).scatter_(1, safe, has.unsqueeze(1))
    others = cosine.masked_fill(is_target, float("-inf"))
    nnccs = others.max(dim=1).values if cosine.shape[1] else neg_inf
    return ccs, nnccs


def check_embeddings(embeddings: Tensor, embedding_size: int, where: str) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is ``[B, embedding_size]``."""
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(f"{where}: embeddings must be [B, {embedding_size}], got {tuple(embeddings.shape)}")


class PrototypeHead(ClassifierHead):
    """Common state of the margin heads: sizes, margin, VIGFace ``sigma`` EMA and the virtual-draw RNG.

    Subclasses own ``weight`` and implement :meth:`make_virtual`.
    """

    def __init__(
        self,
        num_real: int,
        num_virtual: int,
        embedding_size: int,
        margin: nn.Module,
        sample_virtual: bool = True,
        sigma_alpha: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if num_real <= 0 or num_virtual < 0 or embedding_size <= 0:
            raise ValueError(
                f"{name}: need num_real > 0, num_virtual >= 0, embedding_size > 0; "
                f"got {num_real}, {num_virtual}, {embedding_size}"
            )
        self.num_real, self.num_virtual, self.embedding_size = num_real, num_virtual, embedding_size
        self.num_classes = num_real + num_virtual
        self.margin = margin
        self.sample_virtual = sample_virtual
        self.sigma_ema = SigmaEMA(sigma_alpha)
        self.generator = torch.Generator().manual_seed(int(seed))  # virtual draws (same stream on every rank)

    def check_batch(self, embeddings: Tensor, labels: Tensor) -> None:
        """``ValueError`` unless ``embeddings [B, d]`` and ``labels [B]`` in ``[0, num_real)``."""
        name = type(self).__name__
        check_embeddings(embeddings, self.embedding_size, name)
        validate_labels(labels, self.num_real, embeddings.shape[0], name)

    def make_virtual(self, sigma: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """``(virtual embeddings [count, d], their global class rows [count])`` (VIGFace eq. 3)."""
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, Tensor]:
        """Full weight, the (replicated) buffers and the shared virtual RNG state; same on every rank."""
        state = {"weight": self.gather_param("weight", self.weight)}
        state.update({name: buf.detach().clone() for name, buf in self.named_buffers()})
        state[RNG_STATE_KEY] = self.generator.get_state()
        return state

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`full_state_dict` saved at any world size."""
        expected = {"weight", RNG_STATE_KEY, *(name for name, _ in self.named_buffers())}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"load_full_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        weight = state["weight"]
        if tuple(weight.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"load_full_state_dict: weight shape {tuple(weight.shape)} != "
                f"({self.num_classes}, {self.embedding_size})"
            )
        with torch.no_grad():
            self.weight.copy_(self.local_param("weight", weight))
            for name, buf in self.named_buffers():
                buf.copy_(state[name])
        self.generator.set_state(state[RNG_STATE_KEY].cpu())

    def export(self, out_dir: Path, identities: list[str], meta: dict[str, Any]) -> dict[str, Path]:
        """The real + virtual prototype matrix (safetensors + JSON), the conditions of VIGFace stage 2."""
        from fr.prototypes import save_prototypes

        weight = self.full_state_dict()["weight"]
        return {"prototypes": save_prototypes(Path(out_dir) / "prototypes", weight, self.num_real, self.num_virtual,
                                              identities, meta, overwrite=True)}

    def append_virtual(self, feats: Tensor, labels: Tensor, norms: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Add this step's virtual embeddings to the real ``feats``/``labels``/``norms`` (NaN norms).

        Only in training mode with ``sample_virtual`` and ``num_virtual > 0``; ``sigma`` comes from ``feats``.
        """
        if not (self.training and self.sample_virtual and self.num_virtual > 0):
            return feats, labels, norms, 0
        sigma = self.sigma_ema.update(feats)
        count = virtual_batch_size(feats.shape[0], self.num_real, self.num_virtual)
        virtual, rows = self.make_virtual(sigma, count)
        return (
            torch.cat([feats, virtual]),
            torch.cat([labels, rows]),
            torch.cat([norms, norms.new_full((count,), float("nan"))]),
            count,
        )


class FullMarginHead(PrototypeHead):
    """Softmax head over all ``num_real + num_virtual`` prototypes on one device.

    Rows ``[0, num_real)`` of ``weight`` are the real classes, the rest VIGFace's virtual ones. In
    training mode with ``sample_virtual`` and ``num_virtual > 0`` each forward updates ``sigma`` from
    the real embeddings and adds ``virtual_batch_size(B, n, k)`` virtual embeddings (labels
    ``n + j``); they reach the weight only. The margin gets the feature norms (NaN for virtual rows).
    """

    def __init__(
        self,
        num_real: int,
        num_virtual: int,
        embedding_size: int,
        margin: nn.Module,
        sample_virtual: bool = True,
        sigma_alpha: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__(num_real, num_virtual, embedding_size, margin, sample_virtual, sigma_alpha, seed)
        self.weight = nn.Parameter(init_prototype_rows(0, self.num_classes, embedding_size, seed))

    def make_virtual(self, sigma: Tensor, count: int) -> tuple[Tensor, Tensor]:
        virtual, idx = sample_virtual_embeddings(self.weight[self.num_real :], sigma, count, self.generator)
        return virtual, idx + self.num_real

    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        """Loss and certainty scores for real ``embeddings [B, d]`` with labels in ``[0, num_real)``."""
        self.check_batch(embeddings, labels)
        batch = embeddings.shape[0]
        feats = embeddings.float()
        feats, all_labels, norms, num_v = self.append_virtual(feats, labels, feats.detach().norm(dim=1))
        cosine = F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t()
        ccs, nnccs = certainty_scores(cosine[:batch], labels)
        logits = self.margin(cosine, all_labels, norms)
        loss = F.cross_entropy(logits, all_labels)
        return HeadOutput(loss=loss, ccs=ccs, nnccs=nnccs, num_virtual_samples=num_v)
