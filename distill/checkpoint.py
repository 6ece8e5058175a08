"""Resumable state of a distillation: student weights (safetensors), Adam state (torch.save, read back with
``weights_only=True``) and ``state.json``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STUDENT_FILE, OPTIMIZER_FILE, STATE_FILE = "student.safetensors", "optimizer.pt", "state.json"


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP


def save_kd_checkpoint(d: Path, student: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in _unwrapped(student).state_dict().items()},
              str(d / STUDENT_FILE))
    torch.save(optimizer.state_dict(), d / OPTIMIZER_FILE)
    (d / STATE_FILE).write_text(json.dumps(state, indent=1, default=float))


def load_kd_checkpoint(d: Path, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       expect: dict) -> dict:
    """Restore in place; ValueError when the checkpoint's run differs in a field of ``expect`` (batch, mode, ...)."""
    state = json.loads((d / STATE_FILE).read_text())
    changed = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
    if changed:
        raise ValueError(f"distill: the checkpoint in {d} was made with other settings {changed} (saved, now); "
                         "use another run.name to start a new run")
    _unwrapped(student).load_state_dict(load_file(str(d / STUDENT_FILE)), strict=True)
    optimizer.load_state_dict(torch.load(d / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    return state
