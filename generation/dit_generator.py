"""VIGFace's DiT behind the generator interface: conditions are an FR prototype and 5 landmarks per row."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generation.conditions import condition_maps, condition_prototypes, sample_seeded, unit_to_images
from generation.dit import CONFIG_FILE, WEIGHTS_FILE, DiTConfig, load_dit
from generation.generator import Generator, GeneratorError, read_model_config
from generation.sampler import validate_sampling


class DiTGenerator(Generator):
    """``conditions``: ``prototype`` [B, d] (raw prototype rows; normalised here as in training) and
    ``landmarks`` [B, 5, 2] in the DiT's pixel units. DDIM with classifier-free guidance (VIGFace eq. 7)."""

    kind = "vigface_dit"
    condition_kind = "FR prototype + 5-point landmarks"
    condition_keys = ("prototype", "landmarks")

    def __init__(self, model: torch.nn.Module, device: torch.device, steps: int = 50, guidance: float = 4.0,
                 eta: float = 0.0):
        validate_sampling(steps, guidance, eta)
        self.model, self.device = model.eval(), device
        self.config = model.config.to_dict()
        self.image_size = int(model.config.image_size)
        self.options = {"steps": steps, "guidance": guidance, "eta": eta}

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", **options: Any) -> "DiTGenerator":
        cls.read_info(model_dir)
        dev = torch.device(device)
        return cls(load_dit(model_dir, dev), dev, **options)

    @classmethod
    def read_info(cls, model_dir: str | Path) -> dict[str, Any]:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (Path(model_dir) / name).is_file():
                raise FileNotFoundError(f"{Path(model_dir) / name} not found (train_dit exports it)")
        config = DiTConfig.from_dict(read_model_config(model_dir))
        return {"image_size": config.image_size, "condition_dims": {"prototype": config.cond_dim, "landmarks": 10},
                "model_config": config.to_dict()}

    def sample(self, conditions: dict[str, np.ndarray], seeds: Sequence[int]) -> np.ndarray:
        self.check_conditions(conditions, seeds)
        protos = torch.as_tensor(np.asarray(conditions["prototype"], dtype=np.float32), device=self.device)
        if protos.ndim != 2 or protos.shape[1] != self.model.config.cond_dim:
            raise GeneratorError(f"vigface_dit: prototypes must be [B, {self.model.config.cond_dim}], "
                                 f"got {tuple(protos.shape)}")
        lm = torch.as_tensor(np.asarray(conditions["landmarks"], dtype=np.float32), device=self.device)
        maps = condition_maps(lm, self.image_size, self.model.config.landmark_channels)
        x = sample_seeded(self.model, condition_prototypes(protos), maps, list(seeds), **self.options)
        return unit_to_images(x)
