"""AugGen's EDM2 model on disk: the exported model directory (``config.json`` with ``"generator":
"auggen_edm2"`` + ``model.safetensors``) and the resumable training checkpoint.

Checkpoint directory: ``model.safetensors`` (training weights), ``ema.safetensors`` (every power-EMA
profile), ``optimizer.pt`` (Adam state; read with ``weights_only=True``), ``state.json`` (step, counters,
the model config and EMA stds, checked on resume).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from generation.edm2_ema import PowerEMA
from generation.edm2_unet import EDM2Config, EDM2Denoiser
from generation.generator import CONFIG_FILE, KIND_KEY, GeneratorError

KIND = "auggen_edm2"
WEIGHTS_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"


class EDM2CheckpointError(ValueError):
    """A checkpoint or model directory that does not fit the requested model."""


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_edm2_model(model: EDM2Denoiser, out_dir: str | Path, extra: dict[str, Any] | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Export ``model`` (or ``state``, e.g. a reconstructed EMA, in its architecture) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(model) if state is None else {k: v.cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(out / WEIGHTS_FILE))
    config = {KIND_KEY: KIND, "model": model.config.to_dict(), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return out


def read_edm2_config(model_dir: str | Path) -> dict[str, Any]:
    """The export's ``config.json``; FileNotFoundError / GeneratorError naming the file if it is not ours."""
    d = Path(model_dir)
    path = d / CONFIG_FILE
    if not path.is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d}: an auggen_edm2 export needs {CONFIG_FILE} and {WEIGHTS_FILE} (train_auggen writes them)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GeneratorError(f"{path}: not JSON ({exc})") from exc
    if config.get(KIND_KEY) != KIND or "model" not in config:
        raise GeneratorError(f"{path}: generator is {config.get(KIND_KEY)!r}, not an {KIND!r} export")
    return config


def load_edm2_model(model_dir: str | Path, device: str | torch.device = "cpu") -> EDM2Denoiser:
    """The exported denoiser in eval mode; GeneratorError for another generator kind or a broken export."""
    d = Path(model_dir)
    model = EDM2Denoiser(EDM2Config.from_dict(read_edm2_config(d)["model"]))
    try:
        model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
    except RuntimeError as exc:
        raise GeneratorError(f"{d / WEIGHTS_FILE} does not fit the model in {d / CONFIG_FILE}: {exc}") from exc
    return model.to(device).eval()


def save_edm2_checkpoint(directory: str | Path, model: EDM2Denoiser, ema: PowerEMA,
                         optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**state, "model_config": model.config.to_dict(), "ema_stds": list(ema.stds),
                       "ema_updates": ema.num_updates}, indent=1)
    save_file(_tensors(model), str(d / WEIGHTS_FILE))
    save_file({k: v.cpu() for k, v in ema.state_dict().items()}, str(d / EMA_FILE))
    torch.save(optimizer.state_dict(), d / OPTIM_FILE)
    (d / STATE_FILE).write_text(text)
    return d


def load_edm2_checkpoint(directory: str | Path, model: EDM2Denoiser, ema: PowerEMA,
                         optimizer: torch.optim.Optimizer | None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore a checkpoint into existing objects; EDM2CheckpointError if architecture or EMA stds differ."""
    d = Path(directory)
    for name in (WEIGHTS_FILE, EMA_FILE, STATE_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"auggen checkpoint {d} lacks {name}")
    state = json.loads((d / STATE_FILE).read_text())
    if state.get("model_config") != model.config.to_dict():
        diff = {k: (state.get("model_config", {}).get(k), v) for k, v in model.config.to_dict().items()
                if state.get("model_config", {}).get(k) != v}
        raise EDM2CheckpointError(f"auggen checkpoint {d} is another architecture; (saved, requested): {diff}")
    if [float(s) for s in state.get("ema_stds", [])] != list(ema.stds):
        raise EDM2CheckpointError(f"auggen checkpoint {d} has EMA stds {state.get('ema_stds')}, the run uses {ema.stds}")
    model.load_state_dict(load_file(str(d / WEIGHTS_FILE), device=str(device)))
    ema.load_state_dict(load_file(str(d / EMA_FILE), device=str(device)), state["ema_updates"])
    if optimizer is not None and (d / OPTIM_FILE).is_file():
        optimizer.load_state_dict(torch.load(d / OPTIM_FILE, map_location=device, weights_only=True))
    return state


def export_from_checkpoint(checkpoint_dir: str | Path, snapshot_dir: str | Path, out_dir: str | Path,
                           export_std: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the EMA of width ``export_std``: the checkpoint's profile if it is one, else the post-hoc
    reconstruction from the snapshots in ``snapshot_dir``. Returns how it was made (written to config.json)."""
    d = Path(checkpoint_dir)
    state = json.loads((d / STATE_FILE).read_text())
    model = EDM2Denoiser(EDM2Config.from_dict(state["model_config"]))
    stds = [float(s) for s in state["ema_stds"]]
    if float(export_std) in stds:
        prefix = f"std{float(export_std):.3f}."
        ema = load_file(str(d / EMA_FILE))
        weights = {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}
        how = {"ema": "power", "ema_std": float(export_std), "from": "profile", "step": state["step"]}
    else:
        weights, how = _posthoc_weights(model, snapshot_dir, export_std)
    _export_checked(model, weights, out_dir, {**(extra or {}), "export": how})
    return how


def _export_checked(model: EDM2Denoiser, weights: dict, out_dir: str | Path, extra: dict[str, Any]) -> None:
    model.load_state_dict(weights)  # refuse to export weights that do not fit
    save_edm2_model(model, out_dir, extra=extra)
    load_edm2_model(out_dir)


def _posthoc_weights(model: EDM2Denoiser, snapshot_dir: str | Path, std: float) -> tuple[dict, dict[str, Any]]:
    from generation.edm2_ema import reconstruct_ema

    buffers = tuple(k for k, _ in model.named_buffers())
    weights, info = reconstruct_ema(snapshot_dir, std, keep_keys=buffers)
    return weights, {"ema": "power", "ema_std": float(std), "from": "post-hoc reconstruction", **info}


def export_ema_width(model_dir: str | Path, snapshot_dir: str | Path, out_dir: str | Path, std: float) -> dict[str, Any]:
    """Re-export a finished export at another EMA width ``std``, reconstructed post hoc from the training's
    snapshots (EDM2's point: the EMA length is chosen after training, no retraining). ``out_dir`` must differ
    from ``model_dir`` (the original export is never overwritten); the provenance is kept, ``export`` replaced."""
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise EDM2CheckpointError(f"{out_dir}: the re-export must go to a new directory, not over {model_dir}")
    config = read_edm2_config(model_dir)
    model = EDM2Denoiser(EDM2Config.from_dict(config["model"]))
    weights, how = _posthoc_weights(model, snapshot_dir, std)
    extra = {k: v for k, v in config.items() if k not in (KIND_KEY, "model")}
    _export_checked(model, weights, out_dir, {**extra, "export": {**how, "re_exported_from": str(model_dir)}})
    return how
