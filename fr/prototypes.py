"""Export/import of a trained prototype matrix ``[W_real; W_virtual]`` (safetensors + JSON).

``<prefix>.safetensors`` holds one float32 tensor ``"prototypes"`` ``[n + k, d]``;
``<prefix>.json`` holds ``num_real``, ``num_virtual``, ``embedding_size``, ``identities`` (names of
the real rows, or null) and ``extra`` (free-form provenance).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSOR_KEY = "prototypes"


class PrototypeFileError(ValueError):
    """A prototype file pair that is missing, inconsistent or malformed."""


@dataclass
class Prototypes:
    """A prototype matrix with its real/virtual split; rows ``[0, num_real)`` are real identities."""

    weight: Tensor
    num_real: int
    num_virtual: int
    identities: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        return int(self.weight.shape[1])

    def real(self) -> Tensor:
        """The real prototypes ``[n, d]``."""
        return self.weight[: self.num_real]

    def virtual(self) -> Tensor:
        """The virtual prototypes ``[k, d]``."""
        return self.weight[self.num_real :]


def _paths(path_prefix: str | Path) -> tuple[Path, Path]:
    prefix = str(path_prefix)
    return Path(prefix + ".safetensors"), Path(prefix + ".json")


def _check(
    weight_shape: tuple[int, ...], num_real: int, num_virtual: int, identities: list[str] | None, where: str
) -> None:
    if len(weight_shape) != 2:
        raise PrototypeFileError(f"{where}: prototypes must be a 2-D [n + k, d] matrix, got shape {weight_shape}")
    if num_real < 0 or num_virtual < 0 or num_real + num_virtual != weight_shape[0]:
        raise PrototypeFileError(
            f"{where}: num_real ({num_real}) + num_virtual ({num_virtual}) must equal the {weight_shape[0]} rows"
        )
    if identities is not None and len(identities) != num_real:
        raise PrototypeFileError(f"{where}: {len(identities)} identities for {num_real} real prototypes")


def save_prototypes(
    path_prefix: str | Path,
    weight: Tensor,
    num_real: int,
    num_virtual: int,
    identities: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``<prefix>.safetensors`` and ``<prefix>.json``; returns both paths.

    Refuses (``FileExistsError``) to replace existing files unless ``overwrite``.
    """
    tensor_path, json_path = _paths(path_prefix)
    _check(tuple(weight.shape), num_real, num_virtual, identities, f"save_prototypes({path_prefix})")
    if not overwrite:
        existing = [str(p) for p in (tensor_path, json_path) if p.exists()]
        if existing:
            raise FileExistsError(f"save_prototypes: {existing} already exist; pass overwrite=True to replace")
    meta = {
        "num_real": int(num_real),
        "num_virtual": int(num_virtual),
        "embedding_size": int(weight.shape[1]),
        "identities": None if identities is None else [str(i) for i in identities],
        "extra": extra or {},
    }
    text = json.dumps(meta, indent=2)  # serialise first: a non-JSON extra fails before anything is written
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR_KEY: weight.detach().to("cpu", torch.float32).contiguous()}, str(tensor_path))
    json_path.write_text(text)
    return tensor_path, json_path


def load_prototypes(path_prefix: str | Path) -> Prototypes:
    """Read a pair written by :func:`save_prototypes`, checking the JSON against the tensor shape."""
    tensor_path, json_path = _paths(path_prefix)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise PrototypeFileError(f"load_prototypes: {p} not found")
    try:
        meta = json.loads(json_path.read_text())
        num_real, num_virtual, dim = int(meta["num_real"]), int(meta["num_virtual"]), int(meta["embedding_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PrototypeFileError(f"load_prototypes: {json_path} is not a valid prototype config ({exc})") from exc
    tensors = load_file(str(tensor_path))
    if TENSOR_KEY not in tensors:
        raise PrototypeFileError(
            f"load_prototypes: {tensor_path} has no {TENSOR_KEY!r} tensor (keys {sorted(tensors)})"
        )
    weight = tensors[TENSOR_KEY]
    identities = meta.get("identities")
    _check(tuple(weight.shape), num_real, num_virtual, identities, f"load_prototypes({json_path})")
    if weight.shape[1] != dim:
        raise PrototypeFileError(
            f"load_prototypes({json_path}): embedding_size {dim} != tensor width {weight.shape[1]}"
        )
    return Prototypes(weight, num_real, num_virtual, identities, meta.get("extra") or {})
