"""Plain-PyTorch pieces of VIGFace stage-2 training (the Ray wiring is ``ray_jobs.train_dit``).

- :class:`DiTShardDataset`: face shards -> (image in [-1, 1], label, landmarks).
- input checks that must stop a run before any work: prototypes vs model and dataset, FR backbone.
- :func:`dit_train_step`: one AdamW step on the v-prediction + identity loss (VIGFace eq. 6), with
  condition dropout, optional autocast, skipping of non-finite steps on every rank, and the EMA update.
- :func:`grid_samples`: EMA samples for the monitoring grid.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
from torch import nn

from fr.data.face_dataset import FaceShardDataset, decode_batch
from fr.data.images import resize_faces
from fr.prototypes import Prototypes
from fr.data.shards import DatasetInfo
from fr.training import NonFiniteGuard, all_ranks_finite, clip_and_step
from generation.conditions import condition_maps, images_to_unit, unit_to_images
from generation.diffusion import sample_timesteps, training_losses
from generation.dit import DiT, DiTConfig, sample_drop_mask
from generation.ema import EMA
from generation.landmark_map import NUM_LANDMARKS
from generation.sampler import sample


class DiTInputError(ValueError):
    """Stage-2 inputs (dataset, prototypes, FR backbone, sizes) that do not fit together."""


class DiTShardDataset(FaceShardDataset):
    """Items ``(image [3, S, S] float in [-1, 1], label, landmarks [5, 2] float32)`` of face shards.

    ``image_size`` is the shards' size, ``model_image_size`` (default: the same) the DiT's: a smaller
    DiT (a CPU toy model) trains on area-downscaled faces with the landmarks scaled alike.
    No augmentation: a flip or crop would have to move the landmark condition with it.
    """

    def __init__(self, directory, image_size: int = 112, model_image_size: int | None = None):
        super().__init__(directory, image_size=image_size, skip_corrupt=False)
        self.model_image_size = int(model_image_size or image_size)
        if not 1 <= self.model_image_size <= image_size:
            raise DiTInputError(f"the DiT's image_size {self.model_image_size} must be between 1 and the "
                                f"dataset's {image_size}px")
        scale = self.model_image_size / image_size
        self.landmarks = np.concatenate([
            t.column("landmarks").combine_chunks().flatten().to_numpy().reshape(-1, NUM_LANDMARKS, 2)
            for t in self.tables]).astype(np.float32) * np.float32(scale)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        rec = self.record(index)
        arr, labels, skipped = decode_batch([rec["image"]], np.array([rec["label"]]), self.image_size)
        if skipped:
            raise DiTInputError(f"record {index} of {self.paths[0].parent} is not a decodable "
                                f"{self.image_size}x{self.image_size} face")
        arr = resize_faces(arr, self.model_image_size)
        return images_to_unit(arr)[0], int(labels[0]), torch.from_numpy(self.landmarks[index])


# ------------------------------------------------------------------------------------------------
# checks before any work


def check_dit_inputs(model: DiTConfig, prototypes: Prototypes, dataset: DatasetInfo, batch_size: int,
                     num_workers: int) -> None:
    """DiTInputError naming the mismatch between the DiT config, the stage-1 prototypes and the dataset."""
    if prototypes.embedding_size != model.cond_dim:
        raise DiTInputError(f"prototype dimension {prototypes.embedding_size} != the DiT's cond_dim {model.cond_dim}")
    if prototypes.num_real != dataset.num_classes:
        raise DiTInputError(f"the prototype file has {prototypes.num_real} real prototypes but the dataset has "
                            f"{dataset.num_classes} classes (stage 1 must be trained on this dataset)")
    if prototypes.identities is not None:
        bad = [i for i, (a, b) in enumerate(zip(prototypes.identities, dataset.identities)) if a != b]
        if bad:
            i = bad[0]
            raise DiTInputError(f"prototype row {i} is identity {prototypes.identities[i]!r} but dataset label {i} "
                                f"is {dataset.identities[i]!r} ({len(bad)} rows differ)")
    if model.image_size > dataset.image_size:
        raise DiTInputError(f"the dataset's images are {dataset.image_size}px, smaller than the DiT's image_size "
                            f"{model.image_size} (a DiT may be smaller: faces are downscaled, never upscaled)")
    if num_workers < 1 or batch_size < 1 or batch_size % num_workers:
        raise DiTInputError(f"batch_size {batch_size} must be >= 1 and divide across {num_workers} worker(s)")
    if dataset.num_images < batch_size:
        raise DiTInputError(f"the dataset has {dataset.num_images} images, fewer than one batch of {batch_size}")


def frozen(backbone: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (gradients still flow through to its input)."""
    return backbone.eval().requires_grad_(False)


def check_fr_backbone(backbone: nn.Module, cond_dim: int, image_size: int) -> None:
    """DiTInputError unless the backbone takes [1, 3, S, S] images and returns [1, cond_dim] embeddings."""
    was_training = backbone.training
    try:
        with torch.no_grad():
            out = backbone.eval()(torch.zeros(1, 3, image_size, image_size))
    except (ValueError, RuntimeError) as exc:
        raise DiTInputError(f"the FR backbone cannot embed {image_size}x{image_size} images: {exc}") from exc
    finally:
        backbone.train(was_training)
    if tuple(out.shape) != (1, cond_dim):
        raise DiTInputError(f"the FR backbone returns embeddings of shape {tuple(out.shape[1:])}, "
                            f"the prototypes / DiT need ({cond_dim},)")


# ------------------------------------------------------------------------------------------------
# one training step


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The RNG of one step on one rank (timesteps, noise, condition dropout): resumes draw the same."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def dit_train_step(model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   prototypes: torch.Tensor, landmarks: torch.Tensor, generator: torch.Generator,
                   guard: NonFiniteGuard, step: int, id_loss_fn: Callable | None = None, id_weight: float = 0.0,
                   cond_drop_prob: float = 0.1, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """One optimisation step on a batch already on the model's device.

    ``images`` [B, 3, S, S] in [-1, 1], ``prototypes`` [B, d] (normalised condition rows),
    ``landmarks`` [B, 5, 2]. Draws t ~ U{0..T-1}, noise and the drop mask from ``generator`` (CPU),
    computes ``mse(v) + id_weight * ||f_FR(x0_hat) - w||^2`` (VIGFace eq. 6) under autocast when
    ``autocast_dtype`` is set, and unless the loss is non-finite on some rank, steps and updates the EMA.
    """
    core: DiT = getattr(model, "module", model)
    b, device = images.shape[0], images.device
    t = sample_timesteps(b, generator).to(device)
    noise = torch.randn(images.shape, generator=generator).to(device)
    drop = sample_drop_mask(b, cond_drop_prob, generator).to(device)
    maps = condition_maps(landmarks.to(device), core.config.image_size, core.config.landmark_channels)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with amp:
        losses = training_losses(model, images, prototypes, maps, t, noise, drop, id_loss_fn, id_weight)
    optimizer.zero_grad(set_to_none=True)
    grad_norm = float("nan")
    if guard.check(all_ranks_finite(losses["loss"]), step):
        losses["loss"].backward()
        grad_norm = clip_and_step(list(model.parameters()), [optimizer], 0.0)
        ema.update(core)
    out = {k: float(v.detach()) for k, v in losses.items()}
    out.update(grad_norm=grad_norm, dropped=float(drop.float().mean()))
    return out


# ------------------------------------------------------------------------------------------------
# monitoring samples


def grid_samples(model: DiT, prototypes: torch.Tensor, landmarks: np.ndarray, steps: int, guidance: float,
                 seed: int) -> list[np.ndarray]:
    """uint8 RGB samples (one per row of ``prototypes`` [G, d] / ``landmarks`` [G, 5, 2]) from a fixed seed."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    maps = condition_maps(landmarks, model.config.image_size, model.config.landmark_channels)
    maps = None if maps is None else maps.to(device)
    # a CPU generator: the sampler draws on it and moves the noise, so every device gets the same grid
    images = sample(model, prototypes.to(device), maps, steps=steps, guidance=guidance,
                    generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    return list(unit_to_images(images))
