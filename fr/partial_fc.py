"""Sharded ("partial FC") margin softmax head across ``torch.distributed`` ranks.

Rank ``r`` of ``W`` owns the contiguous prototype rows :func:`shard_range` ``(n + k, W, r)`` of
``[W_real; W_virtual]`` (real and virtual rows are split alike). Per step:

1. every rank's embeddings and labels are all-gathered (equal local batch sizes are required);
   the gather's backward sums the ranks' partial gradients and hands each rank its own slice;
2. VIGFace virtual embeddings are drawn **globally from a shared seed**: every rank replays the same
   draw of ``b_v = virtual_batch_size(global batch, n, k)`` row indices and noise, contributes the unit
   prototypes of the rows it owns, and a sum all-reduce assembles them (its backward all-reduces the
   gradient, so each owner gets the full gradient of its rows). The totals are exactly those of a
   single-device head on the global batch; ``sigma`` is computed from the gathered real embeddings,
   so it is identical on every rank;
3. each rank keeps all its classes, or with ``sample_rate < 1`` all positive classes of the gathered
   batch plus random negatives up to ``ceil(sample_rate * local classes)`` (insightface partial FC);
   unsampled rows get a zero gradient this step;
4. the softmax normaliser comes from an all-reduce of the row max and of the sum of exponentials; the
   target logit lives on one rank and is all-reduced. The loss is the mean over the global batch.

With ``sample_rate == 1`` the loss and the gradients w.r.t. the embeddings and the weight equal those
of :class:`fr.heads.FullMarginHead` on the global batch. Every rank must call ``backward`` (the
gather's backward is a collective). Keep the head out of DDP. The gradient returned to each rank's
embeddings is that of the global mean loss; a backbone wrapped in DDP (which averages over ranks)
therefore gets ``1 / world_size`` of it unless ``embedding_grad_scale=world_size``.

With no initialised process group the head runs alone (world size 1, local ops only).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fr.heads import HeadOutput, PrototypeHead, certainty_scores, init_prototype_rows
from fr.virtual_prototypes import draw_virtual_sample, virtual_embeddings



def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, end)`` owned by ``rank``: contiguous, sizes differ by at most one, lower ranks larger."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_classes < world_size:
        raise ValueError(f"shard_range: {num_classes} classes cannot be split over {world_size} ranks")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def _group(group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    return dist.group.WORLD if group is None else group


class _AllGatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward: sum the ranks' gradients (all-reduce), keep this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group, ctx.rows = group, x.shape[0]
        return torch.cat(all_gather_plain(x, group))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = _all_reduce_(grad.contiguous().clone(), dist.ReduceOp.SUM, ctx.group)
        rank = _world(ctx.group)[1]
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows], None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward all-reduces the gradient (each contribution gets the total gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return _all_reduce_(x.contiguous().clone(), dist.ReduceOp.SUM, group)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _all_reduce_(grad.contiguous().clone(), dist.ReduceOp.SUM, ctx.group), None


# Own autograd collectives: torch.distributed.nn.functional is deprecated in torch 2.15 and its
# all-gather backward needs all_to_all; the functional-collectives replacements are not autograd-aware on gloo.
def all_gather_rows(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (equal sizes).

    The backward returns this rank's slice of the gradient summed over ranks.
    """
    return x if _world(group)[0] == 1 else _AllGatherRows.apply(x, group)


def all_reduce_sum(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Differentiable sum over ranks (identity alone)."""
    return x if _world(group)[0] == 1 else _AllReduceSum.apply(x, group)


def _all_reduce_(t: Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> Tensor:
    """In-place, not differentiable; a no-op alone."""
    if _world(group)[0] > 1:
        dist.all_reduce(t, op=op, group=_group(group))
    return t


def all_gather_plain(t: Tensor, group: dist.ProcessGroup | None) -> list[Tensor]:
    world, _ = _world(group)
    if world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=_group(group))
    return out


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged in the forward, its gradient multiplied by ``scale``."""
    return x if scale == 1.0 else x + (scale - 1.0) * (x - x.detach())


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows whose classes are split over ranks.

    The gradient w.r.t. the local logits is the local block of ``softmax - onehot`` over the global
    class set, divided by the number of rows; no collective is needed in the backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, local_labels: Tensor, group: dist.ProcessGroup | None
    ) -> Tensor:
        row_max = logits.detach().max(dim=1).values
        _all_reduce_(row_max, dist.ReduceOp.MAX, group)
        exp = torch.exp(logits.detach() - row_max.unsqueeze(1))
        sum_exp = _all_reduce_(exp.sum(dim=1), dist.ReduceOp.SUM, group)
        has = local_labels >= 0
        target = torch.zeros_like(row_max)
        target[has] = logits.detach()[has, local_labels[has]]
        target_and_count = _all_reduce_(torch.stack([target, has.to(target.dtype)]), dist.ReduceOp.SUM, group)
        if not torch.all(target_and_count[1] == 1):
            bad = int(torch.nonzero(target_and_count[1] != 1)[0])
            owners = int(target_and_count[1, bad])
            raise ValueError(f"sharded cross-entropy: row {bad} has its target on {owners} ranks, expected 1")
        loss_rows = torch.log(sum_exp) + row_max - target_and_count[0]  # -(target - logsumexp)
        ctx.save_for_backward(exp / sum_exp.unsqueeze(1), local_labels)
        return loss_rows.mean()

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        prob, local_labels = ctx.saved_tensors
        grad = prob.clone()
        has = torch.nonzero(local_labels >= 0).squeeze(1)
        grad[has, local_labels[has]] -= 1.0
        return grad * (grad_loss / prob.shape[0]), None, None


def sharded_cross_entropy(logits: Tensor, local_labels: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Mean CE of ``logits [N, S]`` (this rank's columns); ``local_labels[i]`` is a column or -1 (target elsewhere)."""
    return _ShardedCrossEntropy.apply(logits, local_labels, group)


def sample_local_classes(
    positives: Tensor, num_local: int, num_sample: int, generator: torch.Generator | None
) -> Tensor:
    """Sorted local class indices: all ``positives`` plus random negatives, ``max(num_sample, #positives)`` in all."""
    if num_sample >= num_local:
        return torch.arange(num_local)
    scores = torch.rand(num_local, generator=generator)
    scores[positives] = 2.0  # above any uniform draw: positives always win the top-k
    keep = max(num_sample, positives.numel())
    return torch.topk(scores, keep).indices.sort().values


class PartialFCHead(PrototypeHead):
    """Margin softmax head whose ``num_real + num_virtual`` prototypes are sharded over the ranks of ``group``.

    ``weight`` holds this rank's rows ``[start, end)``; :meth:`full_state_dict` /
    :meth:`load_full_state_dict` save and restore it independently of the world size, and
    :meth:`gather_rows` / :meth:`local_rows` do the same for optimizer state of the weight's shape.
    """

    def __init__(
        self,
        num_real: int,
        num_virtual: int,
        embedding_size: int,
        margin: nn.Module,
        sample_rate: float = 1.0,
        sample_virtual: bool = True,
        sigma_alpha: float = 0.9,
        seed: int = 0,
        embedding_grad_scale: float = 1.0,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_real, num_virtual, embedding_size, margin, sample_virtual, sigma_alpha, seed)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"PartialFCHead: sample_rate must be in (0, 1], got {sample_rate}")
        self.group = group
        self.world_size, self.rank = _world(group)
        self.start, self.end = shard_range(self.num_classes, self.world_size, self.rank)
        self.num_local = self.end - self.start
        self.sample_rate = float(sample_rate)
        self.embedding_grad_scale = float(embedding_grad_scale)
        self.weight = nn.Parameter(init_prototype_rows(self.start, self.end, embedding_size, seed))
        self.sample_generator = torch.Generator().manual_seed(int(seed) + 1 + self.rank)  # per-rank negatives
        self.sampled_classes: Tensor | None = None  # global class ids used in the last forward

    def _check_equal_batch(self, batch: int, device: torch.device) -> None:
        sizes = [int(s) for s in all_gather_plain(torch.tensor([batch], device=device), self.group)]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"PartialFCHead: local batch sizes differ across ranks {sizes}; a fixed batch size per step is required"
            )

    def make_virtual(self, sigma: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """Replay the shared draw; each rank adds the unit prototypes it owns, summed over ranks (eq. 3)."""
        idx, noise = draw_virtual_sample(self.num_virtual, count, self.embedding_size, self.generator)
        global_rows = idx.to(self.weight.device) + self.num_real
        owned = torch.nonzero((global_rows >= self.start) & (global_rows < self.end)).squeeze(1)
        mine = F.normalize(self.weight[global_rows[owned] - self.start], dim=1)
        contrib = self.weight.new_zeros((count, self.embedding_size)).index_put((owned,), mine)
        unit = all_reduce_sum(contrib, self.group)
        return virtual_embeddings(unit, sigma, noise.to(unit)), global_rows

    def _select_classes(self, labels: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(local row index or None for all rows, labels remapped to the kept columns or -1)``."""
        in_range = (labels >= self.start) & (labels < self.end)
        local = (labels - self.start).clamp(0, self.num_local - 1)
        num_sample = math.ceil(self.sample_rate * self.num_local)
        if num_sample >= self.num_local:
            self.sampled_classes = torch.arange(self.start, self.end)
            return None, torch.where(in_range, local, torch.full_like(local, -1))
        positives = torch.unique(local[in_range]).cpu()
        index = sample_local_classes(positives, self.num_local, num_sample, self.sample_generator).to(labels.device)
        mapping = torch.full((self.num_local,), -1, dtype=torch.long, device=labels.device)
        mapping[index] = torch.arange(index.numel(), device=labels.device)
        self.sampled_classes = (index + self.start).cpu()
        return index, torch.where(in_range, mapping[local], torch.full_like(local, -1))

    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        """Loss over the global batch (+ virtual embeddings) and this rank's ``ccs``/``nnccs``."""
        self.check_batch(embeddings, labels)
        batch = embeddings.shape[0]
        self._check_equal_batch(batch, embeddings.device)
        feats = all_gather_rows(scale_grad(embeddings.float(), self.embedding_grad_scale), self.group)
        all_labels = torch.cat(all_gather_plain(labels, self.group))
        feats, all_labels, norms, num_v = self.append_virtual(feats, all_labels, feats.detach().norm(dim=1))
        index, local_labels = self._select_classes(all_labels)
        weight = self.weight if index is None else self.weight[index]
        cosine = F.normalize(feats, dim=1) @ F.normalize(weight, dim=1).t()
        real = self.world_size * batch  # scores of every real row over this rank's columns, max over ranks
        scores = torch.stack(certainty_scores(cosine[:real], local_labels[:real]))
        scores = _all_reduce_(scores, dist.ReduceOp.MAX, self.group)
        ccs, nnccs = scores[:, self.rank * batch : (self.rank + 1) * batch]
        logits = self.margin(cosine, local_labels, norms)
        loss = sharded_cross_entropy(logits, local_labels, self.group)
        return HeadOutput(loss=loss, ccs=ccs, nnccs=nnccs, num_virtual_samples=num_v)

    # ---- world-size-independent checkpoints -------------------------------------------------

    def gather_param(self, name: str, local: Tensor) -> Tensor:
        return self.gather_rows(local) if name == "weight" else local.detach().clone()

    def local_param(self, name: str, full: Tensor) -> Tensor:
        return self.local_rows(full) if name == "weight" else full.clone()

    def gather_rows(self, local: Tensor) -> Tensor:
        """The full ``[n + k, ...]`` tensor on every rank from each rank's ``[end - start, ...]`` slice."""
        if local.shape[0] != self.num_local:
            raise ValueError(f"gather_rows: expected {self.num_local} local rows, got shape {tuple(local.shape)}")
        if self.world_size == 1:
            return local.detach().clone()
        max_rows = shard_range(self.num_classes, self.world_size, 0)
        max_rows = max_rows[1] - max_rows[0]
        padded = local.detach().new_zeros((max_rows, *local.shape[1:]))
        padded[: self.num_local] = local.detach()
        parts = all_gather_plain(padded, self.group)
        sizes = [e - s for s, e in (shard_range(self.num_classes, self.world_size, r) for r in range(self.world_size))]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def local_rows(self, full: Tensor) -> Tensor:
        """This rank's rows ``[start, end)`` of a full ``[n + k, ...]`` tensor (e.g. saved optimizer momentum)."""
        if full.ndim < 1 or full.shape[0] != self.num_classes:
            raise ValueError(f"local_rows: expected {self.num_classes} rows (n + k), got shape {tuple(full.shape)}")
        return full[self.start : self.end].clone()
