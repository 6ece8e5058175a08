import math

import pytest
import torch

from evaluation.prototype_stats import prototype_cosine_stats


def test_stats_against_hand_values():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # 2 real, 2 virtual
    s = prototype_cosine_stats(w, 2)
    assert s["real_real_mean"] == pytest.approx(0.0) and s["real_real_max"] == pytest.approx(0.0)
    assert s["virtual_virtual_mean"] == pytest.approx(1.0)  # identical virtual rows: collapsed
    assert s["real_virtual_mean"] == pytest.approx(1 / math.sqrt(2))


def test_random_prototypes_do_not_look_collapsed_and_errors():
    w = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    s = prototype_cosine_stats(w, 100)
    assert abs(s["virtual_virtual_mean"] - s["real_real_mean"]) < 0.02
    with pytest.raises(ValueError, match="num_real"):
        prototype_cosine_stats(w, 0)
