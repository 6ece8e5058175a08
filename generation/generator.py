"""The generator interface: every face generator (VIGFace's DiT, AugGen's EDM2 model) behind one API.

A generator lives in a model directory (weights + ``config.json``). :func:`load_generator` reads the
kind from ``config.json`` (key ``"generator"``; a directory without it is a VIGFace DiT export, the
format from before this interface) and builds the class named in :data:`GENERATORS`. ``sample`` turns a
batch of conditions and one seed per row into RGB uint8 faces; row ``i`` depends on ``seeds[i]`` and
its own conditions only (any batching, any device). ``generate``, AugGen's search and SynthDistill talk
only to this interface; a new generator is one class and one line in :data:`GENERATORS`.
"""
from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

CONFIG_FILE = "config.json"
KIND_KEY = "generator"
LEGACY_KIND = "vigface_dit"  # model directories without a "generator" key (DiT exports)

GENERATORS: dict[str, str] = {
    "vigface_dit": "generation.dit_generator:DiTGenerator",
    "auggen_edm2": "generation.edm2_generator:EDM2Generator",
}


class GeneratorError(ValueError):
    """A model directory or a batch of conditions does not fit the generator."""


class Generator(ABC):
    """A face generator loaded from a model directory.

    Class attributes: ``kind`` (its name in :data:`GENERATORS`), ``condition_kind`` (a short description
    of what it is conditioned on) and ``condition_keys`` (the arrays ``sample`` needs in ``conditions``).
    Instance attributes: ``image_size`` (side of the faces it makes) and ``config`` (the model's config).
    """

    kind: ClassVar[str]
    condition_kind: ClassVar[str]
    condition_keys: ClassVar[tuple[str, ...]]
    image_size: int
    config: dict[str, Any]

    @classmethod
    @abstractmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", **options: Any) -> "Generator":
        """Build from ``model_dir``; ``options`` are sampling settings (steps, guidance, ...)."""

    @classmethod
    @abstractmethod
    def read_info(cls, model_dir: str | Path) -> dict[str, Any]:
        """Without loading weights: ``{"image_size": int, "condition_dims": {key: int}}`` (checks before work)."""

    @abstractmethod
    def sample(self, conditions: dict[str, np.ndarray], seeds: Sequence[int]) -> np.ndarray:
        """RGB uint8 faces ``[B, image_size, image_size, 3]``, one per seed."""

    def describe(self) -> dict[str, Any]:
        """Provenance for a generated dataset: the kind, the model's config and the sampling options."""
        return {"generator": self.kind, "condition_kind": self.condition_kind, "image_size": self.image_size,
                "model_config": self.config, "options": getattr(self, "options", {})}

    def check_conditions(self, conditions: dict[str, np.ndarray], seeds: Sequence[int]) -> int:
        """The batch size; GeneratorError naming a missing key or a row-count mismatch."""
        missing = [k for k in self.condition_keys if k not in conditions]
        if missing:
            raise GeneratorError(f"{self.kind}: conditions lack {missing} (it needs {list(self.condition_keys)})")
        n = len(seeds)
        bad = {k: len(conditions[k]) for k in self.condition_keys if len(conditions[k]) != n}
        if bad:
            raise GeneratorError(f"{self.kind}: {n} seeds but condition rows {bad}")
        return n


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"generator directory {model_dir}: {CONFIG_FILE} not found")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GeneratorError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise GeneratorError(f"{path}: expected a JSON object")
    return config


def generator_kind(model_dir: str | Path) -> str:
    """The kind of generator saved in ``model_dir``."""
    return str(read_model_config(model_dir).get(KIND_KEY, LEGACY_KIND))


def generator_class(kind: str) -> type[Generator]:
    """The class of ``kind``: a name in :data:`GENERATORS`, or an import path ``"package.module:Class"``
    (a generator of another package, with no edit here)."""
    if kind not in GENERATORS and ":" not in kind:
        raise GeneratorError(f"unknown generator kind {kind!r}; known: {sorted(GENERATORS)} (or 'module:Class')")
    module, name = GENERATORS.get(kind, kind).split(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise GeneratorError(f"generator kind {kind!r} names {cls!r}, not a generation.generator.Generator")
    return cls


def read_generator_info(model_dir: str | Path) -> dict[str, Any]:
    """Kind, image size and condition sizes of the generator in ``model_dir``, without loading its weights."""
    kind = generator_kind(model_dir)
    return {"kind": kind, **generator_class(kind).read_info(model_dir)}


def load_generator(model_dir: str | Path, device: str = "cpu", **options: Any) -> Generator:
    """The generator saved in ``model_dir`` (kind from its config.json), ready to sample."""
    return generator_class(generator_kind(model_dir)).load(model_dir, device=device, **options)
