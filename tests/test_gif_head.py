"""GIF token head: the loss against its formula, training predicts the codes, state round trip, 2 ranks -> 1."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fr.gif.hier_codes import save_codes
from fr.gif.lambdas import PATTERNS, lambda_pattern
from fr.gif.token_head import TokenHead, build_gif_head
from fr.head_registry import HeadSpec, build_head
from fr.margins import CosFace

N, L, K, D = 12, 2, 4, 16


def _codes() -> torch.Tensor:
    return torch.tensor([[i // K, i % K] for i in range(N)], dtype=torch.long)  # 12 unique codes in 4 x 4


def _head(**kw) -> TokenHead:
    return TokenHead(_codes(), K, D, lambda_pattern(kw.pop("lambdas", "uniform"), L), seed=0, **kw)


def _hand_loss(head: TokenHead, emb: torch.Tensor, labels: torch.Tensor, lam: np.ndarray, m: float = 0.0) -> float:
    total = 0.0
    w = head.token_weight.detach().numpy()
    for i in range(len(labels)):
        z = emb[i].numpy() / np.linalg.norm(emb[i].numpy())
        for j in range(L):
            wj = w[j] / np.linalg.norm(w[j], axis=1, keepdims=True)
            logits = head.scale * (wj @ z)
            target = int(_codes()[labels[i], j])
            logits[target] -= head.scale * m
            total += lam[j] * (math.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[target])
    return total / len(labels)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_code_loss_equals_formula(pattern):
    torch.manual_seed(0)
    head = _head(lambdas=pattern, scale=10.0)
    emb, labels = torch.randn(6, D), torch.randint(0, N, (6,))
    out = head(emb, labels)
    assert out.loss.item() == pytest.approx(_hand_loss(head, emb, labels, lambda_pattern(pattern, L)), rel=1e-5)
    assert set(out.metrics) >= {"gif/code_acc", "gif/token0_loss", "gif/token1_acc"}
    assert out.ccs is None and not head.provides_centres


def test_code_loss_with_cosface_margin():
    torch.manual_seed(1)
    head = _head(margin=CosFace(scale=10.0, margin=0.3), scale=10.0)
    emb, labels = torch.randn(5, D), torch.randint(0, N, (5,))
    assert head(emb, labels).loss.item() == pytest.approx(
        _hand_loss(head, emb, labels, lambda_pattern("uniform", L), m=0.3), rel=1e-5)


def test_training_predicts_training_codes():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(N, D), dim=1)
    labels = torch.arange(N).repeat(8)
    x = centres[labels] + 0.05 * torch.randn(len(labels), D)
    net = torch.nn.Linear(D, D)
    head = _head(scale=16.0)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=0.05)
    acc = []
    for step in range(40):
        out = head(net(x), labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        acc.append(float(out.metrics["gif/code_acc"]))
    assert acc[0] < 0.5 and acc[-1] == 1.0
    predicted = head.predict_codes(net(centres))
    assert torch.equal(predicted, _codes())


def test_state_round_trip_and_mismatch():
    head = _head()
    with torch.no_grad():
        head.token_weight.add_(1.0)
    state = head.full_state_dict()
    other = _head()
    other.load_full_state_dict(state)
    torch.testing.assert_close(other.token_weight, head.token_weight)
    bad = dict(state, codes=state["codes"].flip(0))
    with pytest.raises(ValueError, match="other identity codes"):
        other.load_full_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        other.load_full_state_dict({"token_weight": state["token_weight"]})


def _write_codes(tmp_path, identities=None):
    ids = identities or [f"id{i}" for i in range(N)]
    save_codes(tmp_path / "codes", _codes().numpy(), K, ids, {"source": "test"})
    return str(tmp_path / "codes"), ids


def test_registry_builds_gif_head_alone_and_combined(tmp_path):
    codes_dir, ids = _write_codes(tmp_path)
    margin = CosFace(scale=10.0, margin=0.2)
    spec = HeadSpec(N, D, margin, identities=list(reversed(ids)), options={"codes": codes_dir, "lambdas": "gaussian"})
    head = build_head("gif", spec)
    assert torch.equal(head.codes, _codes().flip(0))  # re-ordered to the training labels
    combined = build_head("gif", HeadSpec(N, D, margin, num_virtual=3, identities=ids,
                                          options={"codes": codes_dir, "softmax_weight": 0.5}))
    assert combined.provides_centres
    emb, labels = torch.randn(4, D), torch.arange(4)
    out = combined(emb, labels)
    combined.inner.eval()  # no virtual draws: the parts can be recomputed
    combined.eval()
    out = combined(emb, labels)
    inner = combined.inner(emb, labels).loss
    assert out.loss.item() == pytest.approx(out.metrics["gif/code_loss"].item() + 0.5 * inner.item(), rel=1e-5)
    assert out.ccs.shape == (4,)
    state = combined.full_state_dict()
    assert "inner.weight" in state and state["inner.weight"].shape == (N + 3, D)


@pytest.mark.parametrize("options,match", [({}, "needs identity codes"), ({"codes": "x", "foo": 1}, "unknown"),
                                           ({"lambdas": "zigzag"}, "lambdas must be")])
def test_registry_errors(tmp_path, options, match):
    codes_dir, ids = _write_codes(tmp_path)
    opts = {"codes": codes_dir, **options} if "codes" not in options and options else options
    with pytest.raises(ValueError, match=match):
        build_gif_head(HeadSpec(N, D, CosFace(), identities=ids, options=opts))


def test_registry_rejects_other_identities_and_virtual(tmp_path):
    codes_dir, ids = _write_codes(tmp_path)
    with pytest.raises(ValueError, match="other identities"):
        build_gif_head(HeadSpec(N, D, CosFace(), identities=[f"x{i}" for i in range(N)], options={"codes": codes_dir}))
    with pytest.raises(ValueError, match="num_virtual=0"):
        build_gif_head(HeadSpec(N, D, CosFace(), num_virtual=2, identities=ids, options={"codes": codes_dir}))


# ---------------------------------------------------------------- 2 gloo ranks, resumed on 1


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        emb, labels = torch.randn(8, D), torch.randint(0, N, (8,))
        head = TokenHead(_codes(), K, D, lambda_pattern("uniform", L), seed=0)
        opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
        local = emb[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        out = head(local, labels[rank * 4:(rank + 1) * 4])
        out.loss.backward()
        opt.step()
        res = {"loss": out.loss.detach(), "emb_grad": local.grad, "state": head.full_state_dict(),
               "momentum": head.gather_param("token_weight", opt.state[head.token_weight]["momentum_buffer"])}
        torch.save(res, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_and_resume_on_one(tmp_path):
    # fork: the ranks need no fresh interpreter (spawn re-imports torch, ~30 s each on a loaded 2-core box)
    mp.start_processes(_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    torch.testing.assert_close(r0["state"]["token_weight"], r1["state"]["token_weight"])  # replicas stay equal
    torch.manual_seed(0)
    emb, labels = torch.randn(8, D), torch.randint(0, N, (8,))
    single = TokenHead(_codes(), K, D, lambda_pattern("uniform", L), seed=0)
    opt = torch.optim.SGD(single.parameters(), lr=0.5, momentum=0.9)
    x = emb.clone().requires_grad_(True)
    out = single(x, labels)
    out.loss.backward()
    opt.step()
    assert r0["loss"].item() == pytest.approx(out.loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r0["emb_grad"], r1["emb_grad"]]), 2 * x.grad)  # x world for DDP's mean
    torch.testing.assert_close(r0["state"]["token_weight"], single.token_weight.detach())
    resumed = TokenHead(_codes(), K, D, lambda_pattern("uniform", L), seed=3)
    resumed.load_full_state_dict(r0["state"])
    torch.testing.assert_close(resumed.token_weight.detach(), single.token_weight.detach())
    torch.testing.assert_close(r0["momentum"], opt.state[single.token_weight]["momentum_buffer"])
