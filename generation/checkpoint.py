"""Resumable stage-2 training state: DiT, EMA, AdamW state and counters (incl. the data position).

Layout of a checkpoint directory:
- ``model/`` and ``ema/``: :func:`generation.dit.save_dit` folders (``config.json`` + safetensors);
  ``ema/`` is directly loadable with ``load_dit`` and is what gets exported.
- ``optimizer.pt``: the AdamW ``state_dict`` (torch.save; read back with ``weights_only=True``).
- ``state.json``: step, data position, EMA decay and other counters.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from generation.dit import CONFIG_FILE, WEIGHTS_FILE, DiT, load_dit, save_dit
from generation.ema import EMA

MODEL_DIR, EMA_DIR, OPTIM_FILE, STATE_FILE = "model", "ema", "optimizer.pt", "state.json"
# options that only change how the model trains, not its weights: a resume may change them
_TRAINING_ONLY = ("grad_checkpointing", "cond_drop_prob")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the model it is loaded into."""


def weights_sha1(model: torch.nn.Module) -> str:
    """SHA-1 over the float32 bytes of every state_dict tensor in key order (identifies a set of weights)."""
    h = hashlib.sha1()
    for key, value in sorted(_unwrap(model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _unwrap(model: torch.nn.Module) -> DiT:
    return getattr(model, "module", model)


def save_dit_checkpoint(directory: str | Path, model: torch.nn.Module, ema: EMA,
                        optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write model, EMA, optimizer and ``state`` (JSON-serialisable, gets ``ema_decay``) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**state, "ema_decay": ema.decay}, indent=1)  # fail before writing on non-JSON state
    save_dit(_unwrap(model), d / MODEL_DIR)
    save_dit(ema.module, d / EMA_DIR)
    torch.save(optimizer.state_dict(), d / OPTIM_FILE)
    (d / STATE_FILE).write_text(text)
    return d


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _TRAINING_ONLY}


def load_dit_checkpoint(directory: str | Path, model: torch.nn.Module, ema: EMA,
                        optimizer: torch.optim.Optimizer | None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Restore what :func:`save_dit_checkpoint` wrote into existing objects; returns the saved state.

    CheckpointMismatchError if the checkpoint's DiT architecture or EMA decay differs from the given ones.
    """
    d = Path(directory)
    for rel in (f"{MODEL_DIR}/{CONFIG_FILE}", f"{MODEL_DIR}/{WEIGHTS_FILE}", f"{EMA_DIR}/{WEIGHTS_FILE}", STATE_FILE):
        if not (d / rel).is_file():
            raise FileNotFoundError(f"DiT checkpoint {d} lacks {rel}")
    core = _unwrap(model)
    saved = json.loads((d / MODEL_DIR / CONFIG_FILE).read_text())
    if _comparable(saved) != _comparable(core.config.to_dict()):
        diff = {k: (saved.get(k), v) for k, v in _comparable(core.config.to_dict()).items() if saved.get(k) != v}
        raise CheckpointMismatchError(f"DiT checkpoint {d} is another architecture; (saved, requested): {diff}")
    state = json.loads((d / STATE_FILE).read_text())
    if float(state.get("ema_decay", ema.decay)) != ema.decay:
        raise CheckpointMismatchError(f"DiT checkpoint {d} has EMA decay {state['ema_decay']}, "
                                      f"the run uses {ema.decay}")
    core.load_state_dict(load_file(str(d / MODEL_DIR / WEIGHTS_FILE), device=str(device)))
    ema.module.load_state_dict(load_file(str(d / EMA_DIR / WEIGHTS_FILE), device=str(device)))
    if optimizer is not None and (d / OPTIM_FILE).is_file():
        optimizer.load_state_dict(torch.load(d / OPTIM_FILE, map_location=device, weights_only=True))
    return state


def export_ema(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the checkpoint's EMA DiT to ``out_dir`` (``config.json`` + ``model.safetensors``), checked by loading."""
    src = Path(checkpoint_dir) / EMA_DIR
    load_dit(src)  # refuse to export something that does not load
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(src / name, out / name)
    return out
