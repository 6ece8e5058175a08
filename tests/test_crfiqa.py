"""CR-FIQA: certainty ratio targets, quality head and loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fr.crfiqa import (
    DEFAULT_QUALITY_WEIGHT,
    QualityHead,
    ccs_nnccs,
    certainty_ratio,
    crfiqa_targets,
    crfiqa_total_loss,
    quality_loss,
)

# Rows chosen so that: row 0 own class is the max; row 1 own class (0.8) must be excluded from the
# negative max (next is 0.7); row 2 own class is not the max (a negative, 0.6, beats it).
COS = torch.tensor(
    [
        [0.9, 0.1, -0.2, 0.3],
        [0.5, 0.8, 0.7, -0.4],
        [0.2, 0.6, -0.1, 0.4],
    ]
)
LABELS = torch.tensor([0, 1, 3])
HAND_CCS = [0.9, 0.8, 0.4]
HAND_NNCCS = [0.3, 0.7, 0.6]
HAND_CR = [0.9 / 1.3, 0.8 / 1.7, 0.4 / 1.6]  # CCS / (NNCCS + 1), eps negligible


def test_ccs_nnccs_and_cr_match_hand_computation():
    ccs, nnccs = ccs_nnccs(COS, LABELS)
    torch.testing.assert_close(ccs, torch.tensor(HAND_CCS))
    torch.testing.assert_close(nnccs, torch.tensor(HAND_NNCCS))
    torch.testing.assert_close(certainty_ratio(ccs, nnccs), torch.tensor(HAND_CR))
    torch.testing.assert_close(crfiqa_targets(COS, LABELS), torch.tensor(HAND_CR))
    assert torch.equal(COS[1], torch.tensor([0.5, 0.8, 0.7, -0.4]))  # input not modified in place


def test_certainty_ratio_eps_keeps_worst_case_finite():
    cr = certainty_ratio(torch.tensor([0.5, -1.0]), torch.tensor([-1.0, -1.0]), eps=1e-6)
    torch.testing.assert_close(cr, torch.tensor([0.5 / 1e-6, -1.0 / 1e-6]))
    default = certainty_ratio(torch.tensor([0.5]), torch.tensor([-1.0]))  # float32, eps = 1e-9
    torch.testing.assert_close(default, torch.tensor([0.5 / 1e-9]))
    with pytest.raises(ValueError, match="shape"):
        certainty_ratio(torch.zeros(3), torch.zeros(2))


def test_ccs_nnccs_matches_brute_force_on_random_batch():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(16, 7, generator=g) * 2 - 1
    labels = torch.randint(0, 7, (16,), generator=g)
    ccs, nnccs = ccs_nnccs(cos, labels)
    for i in range(16):
        row = cos[i].tolist()
        own = row[labels[i]]
        others = [v for j, v in enumerate(row) if j != labels[i]]
        assert ccs[i].item() == pytest.approx(own)
        assert nnccs[i].item() == pytest.approx(max(others))


@pytest.mark.parametrize(
    "cos,labels,match",
    [
        (torch.zeros(3), torch.tensor([0, 1, 2]), r"\[B, C\]"),
        (torch.zeros(3, 1), torch.tensor([0, 0, 0]), "at least 2 classes"),
        (torch.zeros(3, 4), torch.tensor([0, 1]), "shape \\(3,\\)"),
        (torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]), "integer"),
        (torch.zeros(3, 4), torch.tensor([0, 4, 1]), r"\[0, 4\).*\[0, 4\]"),
        (torch.zeros(3, 4), torch.tensor([0, -1, 1]), r"range \[-1, 1\]"),
    ],
)
def test_ccs_nnccs_bad_input(cos, labels, match):
    with pytest.raises(ValueError, match=match):
        ccs_nnccs(cos, labels)


def test_quality_loss_value_is_smooth_l1():
    pred = torch.tensor([0.0, 2.0])
    target = torch.tensor([0.5, 0.0])
    # |d| = 0.5 < 1 -> 0.5 * 0.5**2 = 0.125 ; |d| = 2 >= 1 -> 2 - 0.5 = 1.5 ; mean 0.8125
    assert quality_loss(pred, target).item() == pytest.approx(0.8125)
    assert quality_loss(pred.unsqueeze(1), target).item() == pytest.approx(0.8125)  # [B, 1] accepted
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        quality_loss(torch.zeros(3), target)


def test_quality_loss_gradient_does_not_reach_targets():
    cos = COS.clone().requires_grad_(True)
    pred = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    target = certainty_ratio(*ccs_nnccs(cos, LABELS))  # not detached by the caller
    quality_loss(pred, target).backward()
    assert cos.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # The gradient is that of smooth L1 w.r.t. pred only: (pred - target) / B inside |d| < 1.
    torch.testing.assert_close(pred.grad, (pred.detach() - torch.tensor(HAND_CR)) / 3)


def test_total_loss_and_head_train_end_to_end():
    torch.manual_seed(0)
    emb = torch.randn(3, 8, requires_grad=True)
    centres = torch.randn(4, 8, requires_grad=True)
    head = QualityHead(8)
    cos = F.normalize(emb) @ F.normalize(centres).t()
    fr_loss = F.cross_entropy(64 * cos, LABELS)
    pred = head(emb)
    assert pred.shape == (3,)
    target = crfiqa_targets(cos, LABELS)
    total = crfiqa_total_loss(fr_loss, pred, target)
    expected = fr_loss + DEFAULT_QUALITY_WEIGHT * F.smooth_l1_loss(pred, target)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert head.fc.weight.grad is not None and head.fc.weight.grad.abs().sum() > 0
    # The quality term's gradient on the centres is zero: only the FR loss moves them.
    centres_grad_total = centres.grad.clone()
    centres.grad = None
    fr_only = F.cross_entropy(64 * (F.normalize(emb) @ F.normalize(centres).t()), LABELS)
    fr_only.backward()
    torch.testing.assert_close(centres_grad_total, centres.grad)
    with pytest.raises(ValueError, match="lambda"):
        crfiqa_total_loss(fr_loss, pred, target, weight=-1.0)


def test_quality_head_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\(B, 8\).*\(2, 5\)"):
        QualityHead(8)(torch.zeros(2, 5))
