"""A third classifier head and a second generator written only against the seams (tests/test_seams.py).

Importable by Ray workers: tests/conftest.py puts this folder on PYTHONPATH before Ray starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fr.head_registry import HeadSpec
from fr.heads import ClassifierHead, HeadOutput
from generation.generator import Generator


class LinearSoftmaxHead(ClassifierHead):
    """Plain linear classifier + cross-entropy: no margin, no centres."""

    provides_centres = False

    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        logits = self.fc(embeddings)
        acc = (logits.argmax(1) == labels).float().mean()
        return HeadOutput(loss=F.cross_entropy(logits, labels), metrics={"stub_accuracy": acc.detach()})


def build_linear_head(spec: HeadSpec) -> ClassifierHead:
    return LinearSoftmaxHead(spec.num_classes, spec.embedding_size)


class FlatColourGenerator(Generator):
    """Each face a flat colour drawn from its seed and the sign pattern of its prototype."""

    kind = "seam_stubs:FlatColourGenerator"
    condition_kind = "FR prototype + 5-point landmarks (ignored)"
    condition_keys = ("prototype", "landmarks")

    def __init__(self, config: dict):
        self.config, self.image_size, self.options = config, int(config["image_size"]), {}

    @classmethod
    def read_info(cls, model_dir):
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return {"image_size": config["image_size"], "condition_dims": {"prototype": config["cond_dim"], "landmarks": 10},
                "model_config": config}

    @classmethod
    def load(cls, model_dir, device="cpu", **options):
        return cls(cls.read_info(model_dir)["model_config"])

    def sample(self, conditions, seeds):
        n = self.check_conditions(conditions, seeds)
        out = np.empty((n, self.image_size, self.image_size, 3), np.uint8)
        for i, seed in enumerate(seeds):
            rng = np.random.default_rng([int(seed), int((np.asarray(conditions["prototype"][i]) > 0).sum())])
            out[i] = rng.integers(0, 256, size=3, dtype=np.uint8)
        return out


def save_flat_colour_generator(model_dir: Path, image_size: int, cond_dim: int) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"generator": FlatColourGenerator.kind,
                                                       "image_size": image_size, "cond_dim": cond_dim}))
    return model_dir
