"""The privacy gate's decision, calibrated against genuinely new people.

The leakage report (``evaluation.leakage``) reduces every synthetic identity to one number, its
highest similarity to a real face, and counts the identities above the real level ``L`` (a quantile
of the real identities' nearest-negative maxima). Real identities are "new people" to each other:
each real identity's nearest-negative maximum is what a person who was never in training scores
against the others. So a fraction of genuinely new identities lies above ``L`` *by construction*
(about ``1 - quantile``), and the old rule "leak fraction <= 1 - quantile" fails a clean set about half
the time (a clean set of 40 identities with one above the level: 2.5% > 1%).

The calibrated rule is a one-sided binomial test of the leak count against that rate:

* expected rate for new people (:func:`new_identity_rate`)
      p0 = (#{real identities with nearest-negative max > L} + 1) / (K + 1)
  (exchangeability: a new identity is one more draw beside the K real ones; the +1 keeps p0 > 0);
* p-value of k leaking identities out of n (:func:`leak_count_pvalue`)
      P(X >= k),  X ~ Binomial(n, p0);
* the set fails when p-value < alpha (:func:`binomial_gate`): more of its identities lie above the real
  level than new people would put there, at false-fail probability <= alpha for a set of new people.

A set that reproduces training identities puts most of its identities above ``L`` (p-value ~ 0) and
fails; a set of new people passes with probability >= 1 - alpha. Measured on toy sets of 40-200
identities by ``bench/privacy_gate_calibration.py`` (``docs/evaluator_notes.md``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

GATES = ("binomial", "fraction")


@dataclass(frozen=True)
class GateDecision:
    """The calibrated gate's figures for one synthetic set."""

    passed: bool
    num_identities: int
    num_leaking: int
    expected_rate: float  # p0
    p_value: float  # P(Binomial(n, p0) >= k)
    alpha: float
    max_passing_leaks: int  # the largest leak count of n identities that still passes

    def as_dict(self) -> dict:
        return asdict(self)


def new_identity_rate(real_identity_max: np.ndarray, real_level: float) -> float:
    """p0 = (#{real identity max > L} + 1) / (K + 1): the chance a new person lies above the real level."""
    values = np.asarray(real_identity_max, dtype=np.float64)
    if values.ndim != 1 or values.size < 1:
        raise ValueError(f"real_identity_max must be a non-empty 1-d array, got shape {values.shape}")
    return float((np.count_nonzero(values > real_level) + 1) / (values.size + 1))


def leak_count_pvalue(num_leaking: int, num_identities: int, rate: float) -> float:
    """P(X >= k), X ~ Binomial(n, p0): how surprising k leaks of n are for a set of new people."""
    _check_counts(num_leaking, num_identities)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return float(binom.sf(num_leaking - 1, num_identities, rate)) if num_leaking > 0 else 1.0


def max_passing_leaks(num_identities: int, rate: float, alpha: float) -> int:
    """The largest k with P(Binomial(n, p0) >= k) >= alpha (the gate's critical count minus one)."""
    _check_alpha(alpha)
    k = 0
    while k < num_identities and leak_count_pvalue(k + 1, num_identities, rate) >= alpha:
        k += 1
    return k


def binomial_gate(num_leaking: int, num_identities: int, rate: float, alpha: float) -> GateDecision:
    """Fail when P(Binomial(n, p0) >= k) < alpha (one-sided binomial test of the leak count)."""
    _check_alpha(alpha)
    p = leak_count_pvalue(num_leaking, num_identities, rate)
    return GateDecision(passed=bool(p >= alpha), num_identities=int(num_identities), num_leaking=int(num_leaking),
                        expected_rate=float(rate), p_value=p, alpha=float(alpha),
                        max_passing_leaks=max_passing_leaks(num_identities, rate, alpha))


def fraction_gate(num_leaking: int, num_identities: int, max_leak_fraction: float) -> bool:
    """The uncalibrated rule (kept for comparison): k / n <= max_leak_fraction."""
    _check_counts(num_leaking, num_identities)
    if not 0.0 <= max_leak_fraction <= 1.0:
        raise ValueError(f"max_leak_fraction must be in [0, 1], got {max_leak_fraction}")
    return num_leaking / num_identities <= max_leak_fraction


def _check_counts(num_leaking: int, num_identities: int) -> None:
    if num_identities < 1 or not 0 <= num_leaking <= num_identities:
        raise ValueError(f"need 0 <= num_leaking <= num_identities and num_identities >= 1, "
                         f"got {num_leaking} of {num_identities}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"evaluate.gate_alpha must be in (0, 1), got {alpha}")


def draw_rates(identity_max: np.ndarray, real_level: float, rate: float, sizes: list[int], draws: int,
               alpha: float, max_leak_fraction: float, seed: int = 0) -> dict[int, dict[str, float]]:
    """Fail rates of both gates over ``draws`` random subsets (without replacement) of each size in ``sizes``
    of a pool of synthetic identities (their ``identity_max``), for the calibration bench and test."""
    pool = np.asarray(identity_max, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        if n > pool.size:
            raise ValueError(f"draw size {n} > pool of {pool.size} identities")
        fails = np.zeros(2)
        for _ in range(draws):
            k = int(np.count_nonzero(pool[rng.choice(pool.size, n, replace=False)] > real_level))
            fails += [not binomial_gate(k, n, rate, alpha).passed, not fraction_gate(k, n, max_leak_fraction)]
        out[n] = {"binomial_fail_rate": float(fails[0] / draws), "fraction_fail_rate": float(fails[1] / draws),
                  "critical_leaks": max_passing_leaks(n, rate, alpha) + 1}
    return out
