"""Backbone registry: build by name, save/load as safetensors + JSON, load insightface ``.pth`` files.

Names: ``iresnet18|34|50|100|200`` (insightface arcface_torch keys), ``ir_se50|ir_se100``
(AdaFace keys), and the CPU-test sizes ``iresnet_tiny`` / ``ir_se_tiny``. Every backbone maps a
(B, 3, 112, 112) normalised RGB batch to a raw (B, embedding_size) embedding and offers
``forward_features(x) -> (embedding, feature_map)``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fr.iresnet import IRESNET_LAYERS, IResNet
from fr.irse import IRSE, IRSE_LAYERS

_COMMON_KWARGS = frozenset({"embedding_size", "dropout", "fp16", "input_size", "auto_resize"})
_SIZE_KWARGS = frozenset({"layers", "base_width"})  # fixed by the name except for the tiny models


def _spec(cls: type[nn.Module], layers: tuple[int, ...], base_width: int, tunable_size: bool) -> dict[str, Any]:
    return {"cls": cls, "defaults": {"layers": layers, "base_width": base_width}, "tunable_size": tunable_size}


_REGISTRY: dict[str, dict[str, Any]] = {
    **{f"iresnet{d}": _spec(IResNet, layers, 64, False) for d, layers in IRESNET_LAYERS.items()},
    **{f"ir_se{d}": _spec(IRSE, layers, 64, False) for d, layers in IRSE_LAYERS.items()},
    "iresnet_tiny": _spec(IResNet, (1, 1, 1, 1), 8, True),
    "ir_se_tiny": _spec(IRSE, (1, 1, 1, 1), 16, True),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
CONFIG_SUFFIX, WEIGHTS_SUFFIX = ".json", ".safetensors"


class BackboneMismatchError(ValueError):
    """A checkpoint does not fit the requested backbone (other name, missing/unexpected keys, shapes)."""


def build_backbone(name: str, embedding_size: int = 512, **kwargs: Any) -> nn.Module:
    """Build backbone ``name`` (see ``BACKBONE_NAMES``).

    kwargs: ``dropout``, ``fp16``, ``input_size``; the tiny models also take ``layers`` and
    ``base_width``. The returned module records ``build_config = {"name", "kwargs"}`` for
    :func:`save_backbone`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    spec = _REGISTRY[name]
    allowed = _COMMON_KWARGS | (_SIZE_KWARGS if spec["tunable_size"] else frozenset())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        valid = sorted(allowed - {"embedding_size"})
        raise ValueError(f"backbone {name!r}: unknown option(s) {unknown}; valid: {valid}")
    kwargs = {"embedding_size": embedding_size, **kwargs}
    if "layers" in kwargs:
        kwargs["layers"] = [int(n) for n in kwargs["layers"]]  # JSON-friendly
    model = spec["cls"](**{**spec["defaults"], **kwargs})
    model.build_config = {"name": name, "kwargs": kwargs}
    return model


def _prefix(path_prefix: str | Path) -> Path:
    """``ckpt/net``, ``ckpt/net.json`` and ``ckpt/net.safetensors`` all name the pair ``ckpt/net.*``."""
    path = Path(path_prefix)
    return path.with_suffix("") if path.suffix in (CONFIG_SUFFIX, WEIGHTS_SUFFIX) else path


def save_backbone(model: nn.Module, path_prefix: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``<prefix>.safetensors`` (state_dict) and ``<prefix>.json`` (``{"name", "kwargs"}``).

    ``config`` defaults to the ``build_config`` recorded by :func:`build_backbone`. Returns the prefix.
    """
    config = dict(config if config is not None else getattr(model, "build_config", {}) or {})
    if "name" not in config:
        raise ValueError("save_backbone: config needs a 'name' (build the model with build_backbone or pass config)")
    extra = sorted(set(config) - {"name", "kwargs"})
    if extra:
        raise ValueError(f"save_backbone: unknown config key(s) {extra}; valid: ['kwargs', 'name']")
    if config["name"] not in _REGISTRY:
        valid = ", ".join(BACKBONE_NAMES)
        raise ValueError(f"save_backbone: unknown backbone {config['name']!r}; valid names: {valid}")
    config.setdefault("kwargs", {})
    prefix = _prefix(path_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(prefix) + WEIGHTS_SUFFIX, metadata={"backbone": config["name"]})
    (Path(str(prefix) + CONFIG_SUFFIX)).write_text(json.dumps(config, indent=2, sort_keys=True))
    return prefix


def load_backbone(
    path_prefix: str | Path, expected_name: str | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the backbone from ``<prefix>.json`` and load ``<prefix>.safetensors`` strictly.

    Raises :class:`BackboneMismatchError` if ``expected_name`` is given and differs, or keys/shapes
    do not match. The model is returned in training mode, like any freshly built module.
    """
    prefix = _prefix(path_prefix)
    config_path, weights_path = Path(str(prefix) + CONFIG_SUFFIX), Path(str(prefix) + WEIGHTS_SUFFIX)
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"load_backbone: missing {path}")
    try:
        config = json.loads(config_path.read_text())
        name, kwargs = config["name"], config.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise TypeError(f"'kwargs' must be an object, got {type(kwargs).__name__}")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"load_backbone: {config_path} is not a backbone config ({err})") from err
    if expected_name is not None and name != expected_name:
        raise BackboneMismatchError(f"checkpoint is {name}, expected {expected_name} ({config_path})")
    model = build_backbone(name, **kwargs)
    load_state_dict_strict(model, load_file(str(weights_path)), source=str(weights_path))
    return model.to(device)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, with an error naming missing/unexpected keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    clashes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or clashes:
        raise BackboneMismatchError(
            f"{source} does not fit {type(model).__name__}: "
            f"missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}; "
            f"shape mismatches {_preview(clashes)}"
        )
    model.load_state_dict(state_dict, strict=True)


def _preview(items: list[str], limit: int = 10) -> str:
    shown = items[:limit]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{shown}{more}"


def load_insightface_pth(model: nn.Module, path: str | Path, prefix: str | None = None) -> nn.Module:
    """Load an insightface/arcface_torch ``backbone.pth`` state_dict into ``model`` strictly.

    Uses ``torch.load(weights_only=True)`` (no arbitrary unpickling); a ``{"state_dict": ...}``
    wrapper is unwrapped. ``prefix`` keeps only the keys under it, with it removed, e.g.
    ``"module."`` (DDP) or ``"model."`` (AdaFace, whose head keys are then dropped). Returns ``model``.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (mapping of name -> tensor), got {type(state).__name__}")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_dict_strict(model, state, source=str(path))
    return model
