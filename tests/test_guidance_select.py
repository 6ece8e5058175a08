"""The selection rules of bench/dit_guidance_select.py (stage-1 scores only, max of min(C, S)) and
bench/auggen_repro_select.py (M_orig top-1 only)."""
import numpy as np
import pytest

from bench.dit_guidance_select import choose_guidance, virtual_rows


def _point(g, c, s, ec=0.0, es=0.0):
    return {"guidance": g, "stage1_consistency_ratio": c, "stage1_separability_ratio": s,
            "evaluator_consistency_ratio": ec, "evaluator_separability_ratio": es}


def test_rule_maximises_the_weaker_ratio_and_ignores_the_evaluator():
    points = [_point(3, 1.1, 0.70, 9, 9), _point(4, 0.9, 0.85), _point(5, 0.80, 0.95)]
    assert choose_guidance(points) == 4
    assert choose_guidance([_point(3, 0.9, 0.9), _point(5, 0.9, 0.9)]) == 3  # ties: the lower guidance
    with pytest.raises(ValueError):
        choose_guidance([])


def test_virtual_rows():
    assert np.array_equal(virtual_rows(10, 3, 0, 2), [10, 10, 11, 11, 12, 12])
    assert np.array_equal(virtual_rows(10, 5, 2, 1), [10, 11])
    with pytest.raises(ValueError, match="2 virtual"):
        virtual_rows(10, 1, 0, 4)


def test_auggen_select_rule_uses_m_orig_only_and_keeps_the_first_on_ties():
    from bench.auggen_repro_select import choose

    pts = [{"std": 0.05, "guidance": 3, "m_orig_top1": 0.2, "evaluator_top1": 0.9},
           {"std": 0.05, "guidance": 5, "m_orig_top1": 0.3, "evaluator_top1": 0.1},
           {"std": 0.10, "guidance": 3, "m_orig_top1": 0.3, "evaluator_top1": 0.5}]
    assert choose(pts) is pts[1]
    with pytest.raises(ValueError):
        choose([])
