"""Fixed probe samples of a DiT for fidelity curves: the same prototype rows, landmark sets and noise seeds
at every checkpoint, so a change in the measured fidelity is a change of the model alone."""
from __future__ import annotations

import numpy as np
import torch

from generation.conditions import condition_maps, sample_seeded, unit_to_images


def probe_rows(num_real: int, num_virtual: int, per_kind: int, images_each: int) -> np.ndarray:
    """Evenly spaced real and virtual prototype rows (``per_kind`` of each), each repeated ``images_each`` times."""
    real = np.linspace(0, num_real - 1, min(per_kind, num_real)).round().astype(np.int64)
    virt = num_real + np.linspace(0, num_virtual - 1, min(per_kind, num_virtual)).round().astype(np.int64)
    return np.repeat(np.concatenate([real, virt if num_virtual else virt[:0]]), images_each)


@torch.no_grad()
def sample_rows(model: torch.nn.Module, cond: torch.Tensor, rows: np.ndarray, landmarks: torch.Tensor | np.ndarray,
                steps: int, guidance: float, batch: int = 48, seed: int = 123) -> np.ndarray:
    """uint8 [len(rows), S, S, 3] samples of prototype ``rows`` (``cond``: the model's condition rows); the
    landmark set and noise seed of output i are fixed by (``seed``, i)."""
    was_training = model.training
    model.eval()
    landmarks = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
    pick = torch.as_tensor(np.random.default_rng(seed).integers(0, len(landmarks), len(rows)))
    lm, seeds, out = landmarks[pick], np.arange(len(rows)) + 1000, []
    device = next(model.parameters()).device
    try:
        for i in range(0, len(rows), batch):
            maps = condition_maps(lm[i:i + batch], model.config.image_size, model.config.landmark_channels)
            maps = None if maps is None else maps.to(device)
            x = sample_seeded(model, cond[torch.as_tensor(rows[i:i + batch])].to(device), maps, seeds[i:i + batch],
                              steps, guidance)
            out.append(unit_to_images(x))
    finally:
        model.train(was_training)
    return np.concatenate(out)
