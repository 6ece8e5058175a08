"""Token weights ``lambda_j`` of GIF's code loss (supplement §7, Fig. 6a): uniform, increasing, decreasing, Gaussian.

Each pattern is normalised to sum to one (supplement: "we normalized the lambda_i values so that their sum
equals one"). The figure shows only the shapes, so the exact curves are ours: increasing/decreasing are
linear ramps ``j + 1`` / ``l - j``; the Gaussian is centred on the middle token with standard deviation
``sigma * l`` (``sigma`` default 0.25 of the code length).
"""
from __future__ import annotations

import numpy as np

PATTERNS = ("uniform", "increasing", "decreasing", "gaussian")


def lambda_pattern(name: str, length: int, sigma: float = 0.25) -> np.ndarray:
    """``lambda [length]`` (float64, sum 1) of pattern ``name`` (one of :data:`PATTERNS`)."""
    if length < 1:
        raise ValueError(f"lambda_pattern: code length must be >= 1, got {length}")
    j = np.arange(length, dtype=np.float64)
    if name == "uniform":
        raw = np.ones(length)  # lambda_j = 1/l, the paper's choice
    elif name == "increasing":
        raw = j + 1.0
    elif name == "decreasing":
        raw = length - j
    elif name == "gaussian":
        if sigma <= 0:
            raise ValueError(f"lambda_pattern: gaussian sigma must be > 0, got {sigma}")
        raw = np.exp(-0.5 * ((j - (length - 1) / 2.0) / (sigma * length)) ** 2)
    else:
        raise ValueError(f"unknown lambda pattern {name!r}; choose one of {list(PATTERNS)}")
    return raw / raw.sum()
