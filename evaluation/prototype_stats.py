"""Pairwise cosine statistics of a prototype matrix: do the virtual prototypes collapse (VIGFace Fig. 3)?"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _offdiag_stats(sim: torch.Tensor, same_block: bool) -> dict[str, float]:
    if same_block:
        n = sim.shape[0]
        if n < 2:
            return {"mean": float("nan"), "max": float("nan"), "std": float("nan")}
        vals = sim[~torch.eye(n, dtype=torch.bool)]
    else:
        vals = sim.reshape(-1)
    return {"mean": float(vals.mean()), "max": float(vals.max()), "std": float(vals.std())}


def prototype_cosine_stats(weight: torch.Tensor, num_real: int) -> dict[str, float]:
    """Mean / max / std of pairwise cosines among real, among virtual, and between real and virtual
    prototypes (rows ``[0, num_real)`` real, the rest virtual). A collapse shows as virtual-virtual
    cosines far above the real-real ones."""
    if not 0 < num_real <= weight.shape[0]:
        raise ValueError(f"num_real {num_real} outside (0, {weight.shape[0]}]")
    w = F.normalize(weight.detach().float(), dim=1)
    real, virt = w[:num_real], w[num_real:]
    out = {f"real_real_{k}": v for k, v in _offdiag_stats(real @ real.t(), True).items()}
    if len(virt):
        out.update({f"virtual_virtual_{k}": v for k, v in _offdiag_stats(virt @ virt.t(), True).items()})
        out.update({f"real_virtual_{k}": v for k, v in _offdiag_stats(real @ virt.t(), False).items()})
    return out
