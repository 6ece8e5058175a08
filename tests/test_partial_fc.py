"""Full head against a hand computation; sharded head (gloo, spawned ranks) against the full head."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fr.heads import FullMarginHead, certainty_scores, init_prototype_rows
from fr.margins import ArcFace, CosFace, build_margin
from fr.partial_fc import PartialFCHead, shard_range
from fr.virtual_prototypes import draw_virtual_sample

N_REAL, N_VIRT, DIM, BATCH, SEED = 7, 4, 8, 3, 1  # 11 rows: 6 + 5 on 2 ranks, 4 + 4 + 3 on 3
STEPS = 2


def _batch(step, world=2, n_real=N_REAL, batch=BATCH):
    g = torch.Generator().manual_seed(100 + step)
    emb = torch.randn(world * batch, DIM, generator=g) * torch.linspace(0.5, 3.0, world * batch).unsqueeze(1)
    return emb, torch.randint(n_real, (world * batch,), generator=g)


def _margin(name):
    return build_margin(name, scale=16.0, margin=0.3)


# ---------------------------------------------------------------- full head vs. hand computation


def test_full_head_matches_hand_computation():
    n, k = N_REAL, N_VIRT
    head = FullMarginHead(n, k, DIM, CosFace(scale=10.0, margin=0.2), seed=SEED)
    emb, labels = _batch(0)
    emb.requires_grad_(True)
    out = head(emb, labels)
    b = emb.shape[0]
    b_v = round(k * b / n)
    assert out.num_virtual_samples == b_v
    # independent reference: sigma (eq. 4), virtual embeddings (eq. 3), CosFace CE over all rows
    unit = F.normalize(emb.detach(), dim=1)
    sigma = unit.var(dim=0, unbiased=False).mean().sqrt()
    idx, noise = draw_virtual_sample(k, b_v, DIM, torch.Generator().manual_seed(SEED))
    w = init_prototype_rows(0, n + k, DIM, SEED)
    virt = w[n + idx] / w[n + idx].norm(dim=1, keepdim=True) + sigma * noise
    feats = torch.cat([emb.detach(), virt])
    cos = (feats / feats.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    y = torch.cat([labels, n + idx])
    logits = 10.0 * (cos - 0.2 * F.one_hot(y, n + k))
    ref = (torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]).mean()
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for i in range(b):
        others = [float(cos[i, j]) for j in range(n + k) if j != labels[i]]
        assert float(out.ccs[i]) == pytest.approx(float(cos[i, labels[i]]), abs=1e-6)
        assert float(out.nnccs[i]) == pytest.approx(max(others), abs=1e-6)
    out.loss.backward()
    assert emb.grad.abs().sum() > 0 and head.weight.grad[n:].abs().sum() > 0
    with pytest.raises(ValueError, match=r"label 7 outside the real classes \[0, 7\)"):
        head(emb[:2].detach(), torch.tensor([0, 7]))


def test_certainty_scores_with_missing_target():
    cos = torch.tensor([[0.1, 0.5, -0.2], [0.3, 0.2, 0.9]])
    ccs, nnccs = certainty_scores(cos, torch.tensor([1, -1]))
    assert ccs.tolist()[0] == pytest.approx(0.5) and ccs[1] == float("-inf")
    assert nnccs.tolist() == pytest.approx([0.1, 0.9])


@pytest.mark.parametrize("classes,world", [(11, 2), (11, 3), (7, 7), (1000, 8)])
def test_shard_range_covers_all_rows(classes, world):
    ranges = [shard_range(classes, world, r) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    with pytest.raises(ValueError, match="cannot be split"):
        shard_range(2, 3, 0)


def test_single_process_partial_fc_equals_full_head():
    for name in ("arcface", "adaface"):
        full = FullMarginHead(N_REAL, N_VIRT, DIM, _margin(name), seed=SEED)
        part = PartialFCHead(N_REAL, N_VIRT, DIM, _margin(name), seed=SEED)
        for step in range(STEPS):
            emb, labels = _batch(step, world=1)
            e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
            o1, o2 = full(e1, labels), part(e2, labels)
            o1.loss.backward()
            o2.loss.backward()
            assert o2.loss.item() == pytest.approx(o1.loss.item(), abs=1e-5)
            torch.testing.assert_close(e2.grad, e1.grad, atol=1e-5, rtol=0)
            torch.testing.assert_close(o2.nnccs, o1.nnccs)
        torch.testing.assert_close(part.weight.grad, full.weight.grad, atol=1e-5, rtol=1e-5)  # grads ~40


def test_embedding_grad_scale():
    grads = []
    for scale in (1.0, 2.0):
        head = PartialFCHead(N_REAL, 0, DIM, CosFace(), seed=SEED, embedding_grad_scale=scale)
        emb, labels = _batch(0, world=1)
        emb.requires_grad_(True)
        head(emb, labels).loss.backward()
        grads.append(emb.grad)
    torch.testing.assert_close(grads[1], 2 * grads[0])


# ---------------------------------------------------------------- spawned gloo ranks


def _run_pair(rank, group, out_dir):
    """Ranks 0, 1 of ``group``: ArcFace/CosFace steps, a sampled step, one SGD step then a full save."""
    for name in ("arcface", "cosface"):
        head = PartialFCHead(N_REAL, N_VIRT, DIM, _margin(name), seed=SEED, group=group)
        res = {"loss": [], "emb_grad": [], "ccs": [], "num_v": []}
        for step in range(STEPS):
            emb, labels = _batch(step)
            mine = slice(rank * BATCH, (rank + 1) * BATCH)
            local = emb[mine].clone().requires_grad_(True)
            out = head(local, labels[mine])
            out.loss.backward()
            res["loss"].append(out.loss.detach())
            res["emb_grad"].append(local.grad)
            res["ccs"].append(torch.stack([out.ccs, out.nnccs]))
            res["num_v"].append(torch.tensor(out.num_virtual_samples))
        res["weight_grad"] = head.weight.grad.clone()
        torch.save(res, out_dir / f"{name}_rank{rank}.pt")
    # checkpoint: one SGD step on the cosface head, then a world-size-independent save
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    opt.step()
    state = head.full_state_dict()
    state["momentum"] = head.gather_rows(opt.state[head.weight]["momentum_buffer"])
    if rank == 0:
        torch.save(state, out_dir / "ckpt.pt")
    # negative sampling: 40 real + 10 virtual classes, 25 per rank, ceil(0.3 * 25) = 8 kept per rank
    n, k = 40, 10
    head = PartialFCHead(n, k, DIM, _margin("arcface"), sample_rate=0.3, seed=SEED, group=group)
    emb, labels = _batch(0, n_real=n, batch=4)
    local = emb[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    out = head(local, labels[rank * 4 : (rank + 1) * 4])
    out.loss.backward()
    virt = draw_virtual_sample(k, out.num_virtual_samples, DIM, torch.Generator().manual_seed(SEED))[0] + n
    try:  # unequal local batch sizes: every rank gets the same clear error
        head(emb[: 3 - rank], labels[: 3 - rank])
        unequal_error = ""
    except ValueError as exc:
        unequal_error = str(exc)
    torch.save(
        {
            "sampled": head.sampled_classes,
            "positives": torch.cat([labels, virt]),
            "loss": out.loss.detach(),
            "emb_grad": local.grad,
            "weight_grad": head.weight.grad,
            "start": torch.tensor(head.start),
            "unequal_error": unequal_error,
        },
        out_dir / f"sampled_rank{rank}.pt",
    )


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        pair = dist.new_group([0, 1])
        if rank < 2:
            _run_pair(rank, pair, out_dir)
        dist.barrier()
        # resume the 2-rank checkpoint on all 3 ranks
        state = torch.load(out_dir / "ckpt.pt", weights_only=True)
        head = PartialFCHead(N_REAL, N_VIRT, DIM, _margin("cosface"), seed=SEED + 5)
        momentum = head.local_rows(state.pop("momentum"))
        head.load_full_state_dict(state)
        resumed = {"full": head.full_state_dict(), "momentum": head.gather_rows(momentum)}  # collectives: all ranks
        if rank == 0:
            torch.save(resumed, out_dir / "resumed3.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pfc")
    mp.spawn(_worker, args=(3, str(out_dir / "init"), out_dir), nprocs=3, join=True)
    return out_dir


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_two_ranks_equal_full_softmax(spawned, name):
    ranks = [_load(spawned / f"{name}_rank{r}.pt") for r in range(2)]
    full = FullMarginHead(N_REAL, N_VIRT, DIM, _margin(name), seed=SEED)
    for step in range(STEPS):
        emb, labels = _batch(step)
        emb.requires_grad_(True)
        out = full(emb, labels)
        out.loss.backward()
        for r, res in enumerate(ranks):
            mine = slice(r * BATCH, (r + 1) * BATCH)
            assert int(res["num_v"][step]) == out.num_virtual_samples == round(N_VIRT * 2 * BATCH / N_REAL)
            assert float(res["loss"][step]) == pytest.approx(out.loss.item(), abs=1e-5)
            torch.testing.assert_close(res["emb_grad"][step], emb.grad[mine], atol=1e-5, rtol=0)
            ref_scores = torch.stack([out.ccs[mine], out.nnccs[mine]])
            torch.testing.assert_close(res["ccs"][step], ref_scores, atol=1e-6, rtol=0)
    w_grad = torch.cat([ranks[0]["weight_grad"], ranks[1]["weight_grad"]])
    assert ranks[0]["weight_grad"].shape[0] == 6
    torch.testing.assert_close(w_grad, full.weight.grad, atol=1e-5, rtol=1e-5)  # grads ~40


def test_sampled_keeps_positives_and_matches_restricted_softmax(spawned):
    n, k = 40, 10
    ranks = [_load(spawned / f"sampled_rank{r}.pt") for r in range(2)]
    positives = set(ranks[0]["positives"].tolist())
    kept = []
    for r, res in enumerate(ranks):
        start, end = shard_range(n + k, 2, r)
        mine = {c for c in positives if start <= c < end}
        sampled = res["sampled"].tolist()
        assert mine <= set(sampled)
        assert len(sampled) == max(math.ceil(0.3 * 25), len(mine)) < 25
        kept += sampled
        unsampled = sorted(set(range(start, end)) - set(sampled))
        assert not res["weight_grad"][[c - start for c in unsampled]].any()
    assert all("batch sizes differ across ranks [3, 2]" in res["unequal_error"] for res in ranks)
    # reference: margin softmax over the union of kept classes, on the same embeddings
    emb, labels = _batch(0, n_real=n, batch=4)
    emb.requires_grad_(True)
    y_all = ranks[0]["positives"]
    unit = F.normalize(emb.detach(), dim=1)
    sigma = unit.var(dim=0, unbiased=False).mean().sqrt()
    idx, noise = draw_virtual_sample(k, len(y_all) - 8, DIM, torch.Generator().manual_seed(SEED))
    w = init_prototype_rows(0, n + k, DIM, SEED)
    feats = torch.cat([emb, F.normalize(w[n + idx], dim=1) + sigma * noise])
    cols = torch.tensor(sorted(kept))
    cos = F.normalize(feats, dim=1) @ F.normalize(w[cols], dim=1).t()
    y_local = torch.searchsorted(cols, y_all)
    loss = F.cross_entropy(ArcFace(scale=16.0, margin=0.3)(cos, y_local), y_local)
    loss.backward()
    for r, res in enumerate(ranks):
        assert float(res["loss"]) == pytest.approx(loss.item(), abs=1e-5)
        torch.testing.assert_close(res["emb_grad"], emb.grad[r * 4 : (r + 1) * 4], atol=1e-5, rtol=0)


def test_resume_two_ranks_on_one_and_three(spawned):
    saved = _load(spawned / "ckpt.pt")
    assert saved["weight"].shape == (N_REAL + N_VIRT, DIM)
    assert not torch.equal(saved["weight"], init_prototype_rows(0, N_REAL + N_VIRT, DIM, SEED))  # it was trained
    resumed3 = _load(spawned / "resumed3.pt")
    torch.testing.assert_close(resumed3["full"]["weight"], saved["weight"], atol=0, rtol=0)
    torch.testing.assert_close(resumed3["momentum"], saved["momentum"], atol=0, rtol=0)
    one = PartialFCHead(N_REAL, N_VIRT, DIM, CosFace(), seed=SEED + 9)
    momentum = saved.pop("momentum")
    one.load_full_state_dict(saved)
    torch.testing.assert_close(one.full_state_dict()["weight"], saved["weight"], atol=0, rtol=0)
    torch.testing.assert_close(one.local_rows(momentum), momentum, atol=0, rtol=0)
    assert float(one.sigma_ema.sigma) == float(saved["sigma_ema.sigma"]) > 0
    # the full state loads straight into the single-device head too
    full = FullMarginHead(N_REAL, N_VIRT, DIM, CosFace())
    saved.pop("virtual_rng_state")
    full.load_state_dict(saved)
    with pytest.raises(ValueError, match="weight shape"):
        rng = one.generator.get_state()
        one.load_full_state_dict({**saved, "virtual_rng_state": rng, "weight": torch.zeros(3, DIM)})
