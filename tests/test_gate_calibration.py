"""The calibrated privacy gate: binomial test of the leak count against the rate new people give."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from evaluation.gate_calibration import (binomial_gate, draw_rates, fraction_gate, leak_count_pvalue,
                                         max_passing_leaks, new_identity_rate)
from evaluation.leakage import leakage_report
from evaluation.privacy import LeakageSettings, gate_verdict


def test_pvalue_is_the_binomial_upper_tail():
    for n, k, p in [(40, 0, 0.01), (40, 1, 0.01), (40, 3, 0.0133), (200, 6, 0.01), (7, 7, 0.5)]:
        brute = sum(binom.pmf(j, n, p) for j in range(k, n + 1))
        assert leak_count_pvalue(k, n, p) == pytest.approx(brute, rel=1e-9, abs=1e-15)


def test_critical_count_and_decision_agree():
    for n in (40, 100, 200):
        k_max = max_passing_leaks(n, 0.0133, 0.01)
        assert binomial_gate(k_max, n, 0.0133, 0.01).passed
        assert not binomial_gate(k_max + 1, n, 0.0133, 0.01).passed
    assert binomial_gate(39, 40, 0.0133, 0.01).p_value < 1e-50  # a set of training identities
    # the old rule fails one leak of 40 (2.5% > 1%); the new one passes it (p = 0.41 for new people)
    assert not fraction_gate(1, 40, 0.01) and binomial_gate(1, 40, 0.0133, 0.01).passed


def test_new_identity_rate_and_bad_input():
    assert new_identity_rate(np.array([0.1, 0.2, 0.3, 0.9]), 0.5) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="gate_alpha"):
        binomial_gate(0, 10, 0.01, 0.0)
    with pytest.raises(ValueError, match="num_leaking"):
        leak_count_pvalue(11, 10, 0.01)
    with pytest.raises(ValueError, match="evaluate.gate"):
        LeakageSettings(gate="loose")


def _identities(rng, centres, sizes, noise):
    emb = np.concatenate([c + noise * rng.standard_normal((m, c.size)) for c, m in zip(centres, sizes)])
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pools():
    """Real classes; a pool of genuinely new identities (same law); new images of the real identities."""
    rng = np.random.default_rng(0)
    d, k_real, noise = 24, 150, 0.12
    centres = _unit(rng, k_real, d)
    real_emb, real_lab = _identities(rng, centres, rng.integers(4, 11, k_real), noise)
    new_emb, new_lab = _identities(rng, _unit(rng, 400, d), rng.integers(4, 11, 400), noise)
    rep_emb, rep_lab = _identities(rng, centres, np.full(k_real, 5), noise)
    new = leakage_report(new_emb, new_lab, real_emb, real_lab)
    rep = leakage_report(rep_emb, rep_lab, real_emb, real_lab, real_reference=new.real_nearest_negative)
    return new, rep


def test_new_people_pass_and_reproduced_identities_fail(pools):
    new, rep = pools
    rate = new_identity_rate(new.real_identity_max, new.real_level)
    sizes = [40, 100, 150]
    fresh = draw_rates(new.identity_max, new.real_level, rate, sizes, 200, alpha=0.01, max_leak_fraction=0.01)
    copies = draw_rates(rep.identity_max, rep.real_level, rate, sizes, 50, alpha=0.01, max_leak_fraction=0.01)
    for n in sizes:
        assert fresh[n]["binomial_fail_rate"] <= 0.05, (n, fresh[n])
        assert copies[n]["binomial_fail_rate"] >= 0.95, (n, copies[n])
    # the old rule false-fails sets of new people far more often (by construction ~1% of them lie above the level)
    old = np.mean([fresh[n]["fraction_fail_rate"] for n in sizes])
    assert old >= 0.2 and old > np.mean([fresh[n]["binomial_fail_rate"] for n in sizes]) + 0.15, fresh


def test_verdict_fields_and_real_ids_still_fail(pools):
    new, rep = pools
    settings = LeakageSettings()
    clean = gate_verdict(settings, new, evaluator="ev")
    assert clean["gate"] == "binomial" and {"p_value", "expected_rate", "max_passing_leaks"} <= set(clean)
    assert clean["evaluator"] == "ev" and "max_leak_fraction" not in clean
    leaked = gate_verdict(settings, rep)
    assert not leaked["passed"] and "identity leakage" in leaked["reason"]
    realaug = gate_verdict(settings, new, ["toy_train_000003"])
    assert not realaug["passed"] and "real identities" in realaug["reason"]
    old = gate_verdict(LeakageSettings(gate="fraction"), new)
    assert old["gate"] == "fraction" and old["max_leak_fraction"] == 0.01
