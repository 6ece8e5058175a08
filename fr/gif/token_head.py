"""GIF's token head: ``l`` token classifiers over the backbone embedding instead of an ``N``-way softmax.

Identity ``y`` has the code ``c^y = (c^y_1, ..., c^y_l)`` (:mod:`fr.gif.hier_codes`). Level ``j`` has ``K``
token prototypes ``W_j [K, d]``; its logits are ``s * cos(z, W_j)`` (optionally with a CosFace/ArcFace/AdaFace
margin from :mod:`fr.margins` on the target token). The loss is the supplement's

    L_C = sum_j lambda_j * CE(logits_j, c^y_j)                                            (supp. §7)

with ``lambda`` from :func:`fr.gif.lambdas.lambda_pattern` (uniform ``1/l`` by default). Optionally the existing
partial-FC margin softmax is added: ``L = code_weight * L_C + softmax_weight * L_softmax`` (``softmax_weight > 0``
keeps an ``N``-row head inside, and with it ``ccs``/``nnccs`` for CR-FIQA and VIGFace's virtual prototypes).

Head cost is ``l * K * d`` parameters and ``O(B l K d)`` per step, independent of ``N`` (only the ``[N, l]``
integer code table grows). Several workers: embeddings and labels are all-gathered (as in the partial-FC head)
and every rank computes the same loss on the global batch, so the replicated token weights get identical
gradients and stay equal. The gather's backward sums the ranks' (identical) gradients, so each rank's
embeddings get ``world_size`` times the global-batch gradient: exactly what DDP's averaging of the backbone
gradients needs (no extra scale, unlike the partial-FC head whose ranks each hold only part of the loss). The
full state (token weights, the code table, the inner head's full state) is world-size independent.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fr.gif.hier_codes import CodeBook, load_codes, save_codes
from fr.gif.lambdas import PATTERNS, lambda_pattern
from fr.head_registry import HeadSpec, build_partial_fc_head
from fr.heads import INIT_STD, ClassifierHead, HeadOutput, check_embeddings, validate_labels
from fr.margins import build_margin
from fr.partial_fc import all_gather_plain, all_gather_rows

INNER = "inner."


def code_loss(logits: Tensor, targets: Tensor, lambdas: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_C, CE_j [l])`` with ``L_C = sum_j lambda_j CE_j`` (supplement §7); ``logits [l, B, K]``, ``targets [B, l]``."""
    per_token = torch.stack([F.cross_entropy(logits[j], targets[:, j]) for j in range(logits.shape[0])])
    return (lambdas.to(per_token) * per_token).sum(), per_token


class TokenHead(ClassifierHead):
    """Predicts each identity's ``l`` code tokens; see the module docstring for the loss and the distribution."""

    def __init__(self, codes: Tensor, vocab: int, embedding_size: int, lambdas: np.ndarray, *,
                 margin: nn.Module | None = None, scale: float = 30.0, inner: ClassifierHead | None = None,
                 softmax_weight: float = 0.0, code_weight: float = 1.0, seed: int = 0, group=None) -> None:
        super().__init__()
        if codes.ndim != 2 or codes.dtype != torch.long:
            raise ValueError(f"TokenHead: codes must be an int64 [N, l] tensor, got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= vocab):
            raise ValueError(f"TokenHead: codes outside [0, {vocab})")
        if len(lambdas) != codes.shape[1] or not np.isclose(np.sum(lambdas), 1.0):
            raise ValueError(f"TokenHead: need {codes.shape[1]} lambdas summing to 1, got {list(lambdas)}")
        if (inner is None) != (softmax_weight == 0):
            raise ValueError("TokenHead: an inner softmax head goes with softmax_weight > 0, and only then")
        self.num_classes, self.length = codes.shape
        self.vocab, self.embedding_size = int(vocab), int(embedding_size)
        self.register_buffer("codes", codes.clone())
        self.register_buffer("lambdas", torch.as_tensor(np.asarray(lambdas), dtype=torch.float32))
        gen = torch.Generator().manual_seed(int(seed) + 424242)
        self.token_weight = nn.Parameter(torch.randn((self.length, self.vocab, embedding_size), generator=gen) * INIT_STD)
        self.margin, self.scale = margin, float(scale)
        self.inner = inner
        self.softmax_weight, self.code_weight = float(softmax_weight), float(code_weight)
        self.provides_centres = inner is not None and inner.provides_centres
        self.group = group

    def token_logits(self, feats: Tensor, targets: Tensor | None) -> Tensor:
        """``[l, B, K]`` logits; the margin (if any) on the target tokens ``targets [B, l]``."""
        cosine = torch.einsum("bd,lkd->lbk", F.normalize(feats, dim=1), F.normalize(self.token_weight, dim=2))
        if self.margin is None or targets is None:
            return self.scale * cosine
        l, b, k = cosine.shape
        norms = feats.detach().norm(dim=1).repeat(l)
        return self.margin(cosine.reshape(l * b, k), targets.t().reshape(-1), norms).view(l, b, k)

    @torch.no_grad()
    def predict_codes(self, embeddings: Tensor) -> Tensor:
        """``[B, l]`` most likely token per level (argmax of the cosines)."""
        return self.token_logits(embeddings.float(), None).argmax(dim=2).t()

    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        name = type(self).__name__
        check_embeddings(embeddings, self.embedding_size, name)
        validate_labels(labels, self.num_classes, embeddings.shape[0], name)
        feats = all_gather_rows(embeddings.float(), self.group)  # backward: world x the global-batch gradient
        all_labels = torch.cat(all_gather_plain(labels, self.group))
        targets = self.codes[all_labels]
        logits = self.token_logits(feats, targets)
        l_c, per_token = code_loss(logits, targets, self.lambdas)
        with torch.no_grad():
            hit = self.token_logits(feats, None).argmax(dim=2).t() == targets  # accuracy without the margin
        metrics: dict[str, Any] = {"gif/code_loss": l_c.detach(), "gif/code_acc": hit.all(dim=1).float().mean()}
        for j in range(self.length):
            metrics[f"gif/token{j}_loss"] = per_token[j].detach()
            metrics[f"gif/token{j}_acc"] = hit[:, j].float().mean()
        loss, ccs, nnccs, num_v = self.code_weight * l_c, None, None, 0
        if self.inner is not None:
            inner = self.inner(embeddings, labels)
            loss = loss + self.softmax_weight * inner.loss
            ccs, nnccs, num_v = inner.ccs, inner.nnccs, inner.num_virtual_samples
            metrics["gif/softmax_loss"] = inner.loss.detach()
            metrics.update(inner.metrics)
        return HeadOutput(loss=loss, ccs=ccs, nnccs=nnccs, num_virtual_samples=num_v, metrics=metrics)

    # ---- world-size-independent checkpoints -------------------------------------------------

    def full_state_dict(self) -> dict[str, Tensor]:
        state = {"token_weight": self.token_weight.detach().clone(), "codes": self.codes.clone(),
                 "lambdas": self.lambdas.clone()}
        if self.margin is not None:
            state.update({f"margin.{k}": v.detach().clone() for k, v in self.margin.state_dict().items()})
        if self.inner is not None:
            state.update({INNER + k: v for k, v in self.inner.full_state_dict().items()})
        return state

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        mine = {k: v for k, v in state.items() if not k.startswith(INNER)}
        expected = set(self.full_state_dict()) - {k for k in self.full_state_dict() if k.startswith(INNER)}
        if set(mine) != expected:
            raise ValueError(f"TokenHead.load_full_state_dict: missing {sorted(expected - set(mine))}, "
                             f"unexpected {sorted(set(mine) - expected)}")
        if not torch.equal(mine["codes"].cpu(), self.codes.cpu()):
            raise ValueError("TokenHead.load_full_state_dict: the checkpoint was trained with other identity codes "
                             "than train_fr.codes")
        if tuple(mine["token_weight"].shape) != tuple(self.token_weight.shape):
            raise ValueError(f"TokenHead.load_full_state_dict: token weights {tuple(mine['token_weight'].shape)} != "
                             f"{tuple(self.token_weight.shape)}")
        with torch.no_grad():
            self.token_weight.copy_(mine["token_weight"])
            self.lambdas.copy_(mine["lambdas"])
        if self.margin is not None:
            self.margin.load_state_dict({k[len("margin."):]: v for k, v in mine.items() if k.startswith("margin.")})
        if self.inner is not None:
            self.inner.load_full_state_dict({k[len(INNER):]: v for k, v in state.items() if k.startswith(INNER)})

    def gather_param(self, name: str, local: Tensor) -> Tensor:
        if name.startswith(INNER):
            return self.inner.gather_param(name[len(INNER):], local)
        return local.detach().clone()

    def local_param(self, name: str, full: Tensor) -> Tensor:
        if name.startswith(INNER):
            return self.inner.local_param(name[len(INNER):], full)
        return full.clone()

    def export(self, out_dir: Path, identities: list[str], meta: dict[str, Any]) -> dict[str, Path]:
        """The code table and token prototypes beside the backbone (+ the inner head's prototypes)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        state = self.full_state_dict()
        paths = {"codes": save_codes(out_dir / "codes", state["codes"].cpu().numpy(), self.vocab, identities,
                                     {"source": "train_fr export", **meta}, overwrite=True)}
        paths["code_tokens"] = out_dir / "code_tokens.safetensors"
        save_file({"token_weight": state["token_weight"].cpu().contiguous(), "lambdas": state["lambdas"].cpu()},
                  str(paths["code_tokens"]))
        if self.inner is not None:
            paths.update(self.inner.export(out_dir, identities, meta))
        return paths


# ------------------------------------------------------------------------------------------------
# the registry factory (fr.head_registry.HEADS["gif"])

OPTIONS = {"codes": "", "lambdas": "uniform", "lambda_sigma": 0.25, "margin": "none", "token_scale": 30.0,
           "token_margin": -1.0, "softmax_weight": 0.0, "code_weight": 1.0}


def codes_in_label_order(book: CodeBook, identities: list[str], where: str) -> np.ndarray:
    """The code table re-ordered to the training set's labels; ValueError unless the identity sets match."""
    if not identities:
        if len(book.identities) != book.codes.shape[0]:
            raise ValueError(f"{where}: code table and identity list disagree")
        return book.codes
    index = {s: i for i, s in enumerate(book.identities)}
    missing = [s for s in identities if s not in index]
    if missing or len(identities) != len(book.identities):
        raise ValueError(f"{where}: the codes were built for other identities than the training set "
                         f"({len(book.identities)} coded, {len(identities)} in the dataset, {len(missing)} uncoded, "
                         f"first {missing[:5]}); rerun build_codes on this dataset")
    return book.codes[np.array([index[s] for s in identities])]


def _token_margin(kind: str, spec: HeadSpec, scale: float, m: float) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "train":
        return spec.margin  # the train_fr margin (its own scale)
    if kind not in ("cosface", "arcface", "adaface"):
        raise ValueError(f"train_fr.head_kwargs.margin must be none|train|cosface|arcface|adaface, got {kind!r}")
    return build_margin(kind, scale=scale, **({} if m < 0 else {"margin": m}))


def build_gif_head(spec: HeadSpec) -> TokenHead:
    """The GIF token head from ``train_fr.codes`` and ``train_fr.head_kwargs`` (see :data:`OPTIONS`)."""
    unknown = sorted(set(spec.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"train_fr.head=gif: unknown head_kwargs {unknown}; valid: {sorted(OPTIONS)}")
    opt = {**OPTIONS, **spec.options}
    if not opt["codes"]:
        raise ValueError("train_fr.head=gif needs identity codes: set train_fr.codes=<build_codes output directory>")
    if opt["lambdas"] not in PATTERNS:
        raise ValueError(f"train_fr.head_kwargs.lambdas must be one of {list(PATTERNS)}, got {opt['lambdas']!r}")
    book = load_codes(opt["codes"])
    codes = codes_in_label_order(book, spec.identities, str(opt["codes"]))
    if codes.shape[0] != spec.num_classes:
        raise ValueError(f"{opt['codes']}: {codes.shape[0]} coded identities, the training set has {spec.num_classes}")
    weight = float(opt["softmax_weight"])
    if weight < 0:
        raise ValueError(f"train_fr.head_kwargs.softmax_weight must be >= 0, got {weight}")
    if weight == 0 and spec.num_virtual:
        raise ValueError("train_fr.head=gif alone has no prototypes for VIGFace's virtual classes: set "
                         "train_fr.num_virtual=0, or train_fr.head_kwargs.softmax_weight > 0")
    inner = build_partial_fc_head(replace(spec, options={})) if weight > 0 else None
    return TokenHead(torch.as_tensor(codes, dtype=torch.long), book.vocab, spec.embedding_size,
                     lambda_pattern(opt["lambdas"], book.length, float(opt["lambda_sigma"])),
                     margin=_token_margin(str(opt["margin"]), spec, float(opt["token_scale"]),
                                          float(opt["token_margin"])),
                     scale=float(opt["token_scale"]), inner=inner, softmax_weight=weight,
                     code_weight=float(opt["code_weight"]), seed=spec.seed)
