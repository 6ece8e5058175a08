"""EDM2's post-hoc power-function EMA: two (or more) EMA profiles during training, snapshots of them,
and a least-squares reconstruction of the EMA of any chosen width afterwards.

A power-function EMA with exponent ``gamma`` averages the training trajectory with weights
``p(tau) ∝ tau^gamma`` on ``[0, t]``; it is run as ``ema <- beta_t ema + (1 - beta_t) theta`` with
``beta_t = (1 - 1/t)^(gamma + 1)`` at update ``t`` (1-based). Its relative width is
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (EDM2: stds 0.05 and 0.10 are kept).
Reconstruction: snapshots ``(t_i, gamma_i)`` span profiles ``p_i``; the target profile ``p*`` is
approximated by ``sum_i x_i p_i`` with ``x = argmin ||sum_i x_i p_i - p*||^2`` using the closed-form
inner products of power functions (continuous time), and the weights are ``sum_i x_i theta_i``.
``torch.optim.swa_utils`` has only constant-decay EMAs, hence this module.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

SNAPSHOT_RE = re.compile(r"^ema-std(?P<std>[0-9.]+)-step(?P<step>\d+)\.safetensors$")


def std_to_gamma(std: float) -> float:
    """The exponent gamma whose power-function profile has relative width ``std`` (inverse of eq. above)."""
    if not 0 < std < np.sqrt(1 / 12):  # gamma -> 0 gives sqrt(1/12), the widest profile (uniform)
        raise ValueError(f"EMA std must be in (0, {np.sqrt(1 / 12):.4f}), got {std}")
    # sigma^2 (gamma+2)^2 (gamma+3) - (gamma+1) = 0, a cubic in gamma with one root > 0 in this range
    s2 = std ** 2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
    return float(max(real))


def gamma_to_std(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def profile_inner(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """``<p_a, p_b> = int_0^min(t_a,t_b) p_a p_b`` for normalised power profiles
    ``p(tau) = (g+1) tau^g / t^(g+1)`` (broadcasting)."""
    m = np.minimum(t_a, t_b)
    g = g_a + g_b + 1
    return (g_a + 1) * (g_b + 1) * m ** g / (g * t_a ** (g_a + 1) * t_b ** (g_b + 1))


def posthoc_weights(snap_steps: np.ndarray, snap_gammas: np.ndarray, target_step: float,
                    target_gamma: float) -> np.ndarray:
    """Least-squares coefficients ``x`` of the snapshots that best reproduce the target profile."""
    t = np.asarray(snap_steps, np.float64)[:, None]
    g = np.asarray(snap_gammas, np.float64)[:, None]
    a = profile_inner(t, g, t.T, g.T)
    b = profile_inner(t[:, 0], g[:, 0], np.float64(target_step), np.float64(target_gamma))
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    return x


class PowerEMA:
    """Power-function EMAs of one model for each std in ``stds`` (copies of the model, frozen)."""

    def __init__(self, model: torch.nn.Module, stds: tuple[float, ...] = (0.05, 0.10)):
        if not stds:
            raise ValueError("PowerEMA needs at least one std")
        self.stds = tuple(float(s) for s in stds)
        self.gammas = tuple(std_to_gamma(s) for s in self.stds)
        self.modules = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.stds]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        t = self.num_updates
        src = [p.detach() for p in model.parameters()]
        for module, gamma in zip(self.modules, self.gammas):
            beta = (1 - 1 / t) ** (gamma + 1)
            dst = [p for p in module.parameters()]
            torch._foreach_lerp_(dst, [s.to(d.dtype) for s, d in zip(src, dst)], 1 - beta)
            for b_dst, b_src in zip(module.buffers(), model.buffers()):
                b_dst.copy_(b_src)

    def module_for(self, std: float) -> torch.nn.Module:
        if float(std) not in self.stds:
            raise KeyError(f"no EMA profile of std {std}; profiles: {self.stds}")
        return self.modules[self.stds.index(float(std))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for std, module in zip(self.stds, self.modules):
            out.update({f"std{std:.3f}.{k}": v.contiguous() for k, v in module.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        for std, module in zip(self.stds, self.modules):
            prefix = f"std{std:.3f}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise KeyError(f"EMA state has no profile of std {std} (keys start with "
                               f"{sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in state})[:4]})")
            module.load_state_dict(sub)
        self.num_updates = int(num_updates)

    def write_snapshots(self, directory: str | Path, step: int) -> list[Path]:
        """One safetensors file per profile: ``ema-std<std>-step<step>.safetensors`` (existing ones kept)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for std, module in zip(self.stds, self.modules):
            path = d / f"ema-std{std:.3f}-step{step:09d}.safetensors"
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
                tmp.replace(path)
            paths.append(path)
        return paths


def list_snapshots(directory: str | Path) -> list[tuple[float, int, Path]]:
    """(std, step, path) of every snapshot file in ``directory``, sorted by step."""
    out = []
    for p in sorted(Path(directory).glob("ema-std*-step*.safetensors")):
        m = SNAPSHOT_RE.match(p.name)
        if m:
            out.append((float(m["std"]), int(m["step"]), p))
    return sorted(out, key=lambda r: (r[1], r[0]))


def reconstruct_ema(directory: str | Path, target_std: float, target_step: int | None = None,
                    keep_keys: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of the power-function EMA of width ``target_std`` at ``target_step`` (default: the last
    snapshot's step), from the snapshots in ``directory``; returns (state_dict, info with the coefficients).
    ``keep_keys`` (buffers such as the Fourier frequencies) are copied from the last snapshot, not mixed."""
    snaps = list_snapshots(directory)
    if not snaps:
        raise FileNotFoundError(f"no EMA snapshots (ema-std*-step*.safetensors) in {directory}")
    step = int(target_step or snaps[-1][1])
    snaps = [s for s in snaps if s[1] <= step]
    coeffs = posthoc_weights(np.array([s[1] for s in snaps]), np.array([std_to_gamma(s[0]) for s in snaps]),
                             step, std_to_gamma(target_std))
    out: dict[str, torch.Tensor] = {}
    for (std, _, path), x in zip(snaps, coeffs):
        for k, v in load_file(str(path)).items():
            if k in keep_keys:
                out[k] = v
            elif v.is_floating_point():
                out[k] = out.get(k, torch.zeros_like(v, dtype=torch.float64)) + float(x) * v.double()
            else:
                out.setdefault(k, v)
    state = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in out.items()}
    info = {"target_std": target_std, "target_step": step,
            "snapshots": [{"std": s[0], "step": s[1], "coeff": float(x)} for s, x in zip(snaps, coeffs)]}
    return state, info
