"""AugGen's class-conditional EDM2 model behind the generator interface.

``conditions["class_vector"]``: float ``[B, num_classes]``: one-hot rows reproduce training classes
(D_repro), ``alpha c_i + beta c_j`` rows make AugGen's mixed classes, zero rows are unconditional.
Sampling: EDM Heun (default 32 steps, sigma 0.002..80, rho 7) with optional CFG (``guidance`` != 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generation.edm2_checkpoint import KIND, load_edm2_model, read_edm2_config
from generation.edm2_sampler import sample_edm2, validate_edm_sampling
from generation.edm2_unet import EDM2Denoiser
from generation.generator import Generator, GeneratorError


class EDM2Generator(Generator):
    kind = KIND
    condition_kind = "class vector (one-hot, mixed alpha*c_i + beta*c_j, or zero)"
    condition_keys = ("class_vector",)

    def __init__(self, model: EDM2Denoiser, device: torch.device, steps: int = 32, guidance: float = 1.0,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, batch_size: int = 64):
        validate_edm_sampling(steps, guidance, sigma_min, sigma_max, rho)
        self.model, self.device = model.eval(), device
        self.config = model.config.to_dict()
        self.image_size = int(model.config.image_size)
        self.num_classes = int(model.config.num_classes)
        self.batch_size = int(batch_size)
        self.options = {"steps": steps, "guidance": guidance, "sigma_min": sigma_min, "sigma_max": sigma_max,
                        "rho": rho}

    @classmethod
    def read_info(cls, model_dir: str | Path) -> dict[str, Any]:
        config = read_edm2_config(model_dir)
        return {"image_size": int(config["model"]["image_size"]),
                "condition_dims": {"class_vector": int(config["model"]["num_classes"])}}

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", **options: Any) -> "EDM2Generator":
        dev = torch.device(device)
        return cls(load_edm2_model(model_dir, dev), dev, **options)

    def class_vectors(self, conditions: dict[str, np.ndarray]) -> torch.Tensor:
        c = np.asarray(conditions["class_vector"], dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != self.num_classes:
            raise GeneratorError(f"{self.kind}: class_vector must be [B, {self.num_classes}] (the model's "
                                 f"num_classes), got {c.shape}")
        if not np.all(np.isfinite(c)):
            raise GeneratorError(f"{self.kind}: class_vector has non-finite entries")
        return torch.from_numpy(c.copy()).to(self.device)

    def sample(self, conditions: dict[str, np.ndarray], seeds: Sequence[int]) -> np.ndarray:
        self.check_conditions(conditions, seeds)
        cvec = self.class_vectors(conditions)
        amp = torch.bfloat16 if self.device.type == "cuda" else None
        out = []
        for lo in range(0, len(seeds), self.batch_size):
            rows = slice(lo, lo + self.batch_size)
            out.append(sample_edm2(self.model, cvec[rows], list(seeds)[rows], amp_dtype=amp, **self.options))
        if not out:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return np.concatenate(out)
