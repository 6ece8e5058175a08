"""What each generated face is conditioned on, decided deterministically before any sampling.

- landmark sets: the 5-point landmarks of a real dataset (``load_landmark_sets``), rendered as the
  DiT's landmark map (``condition_maps``); every generated row draws one set uniformly, so the pose
  distribution follows the real data (VIGFace §3.2, Fig. 4).
- prototypes: the stage-1 prototype rows, L2-normalised (``condition_prototypes``): ArcFace-style
  heads only use directions, so the norm carries no identity information.
- work list: :class:`GenerationPlan` says which (prototype, image index, landmark set, noise seed)
  each output row gets. Row ``r``'s landmark set and noise seed are a function of
  ``(seed, prototype row, image index)`` only, so a resumed run regenerates identical rows and the
  output does not depend on batch size, chunking or actor order.
- ``sample_seeded``: batched DDIM + CFG sampling whose noise is drawn per row from its own seed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generation.landmark_map import NUM_LANDMARKS, render_landmark_map
from generation.sampler import sample

LANDMARK_SIGMA_112 = 3.0  # Gaussian std (pixels) of a landmark at 112x112; scaled with the image side
WHICH = ("virtual", "real", "both")


class ConditionError(ValueError):
    """Generation inputs (prototypes, landmark sets, plan options) that cannot work together."""


# ------------------------------------------------------------------------------------------------
# landmark sets and prototypes


def check_landmark_sets(landmarks: np.ndarray, where: str = "landmarks") -> np.ndarray:
    """Return ``landmarks`` as float32 [M, 5, 2] (M >= 1, finite); ConditionError otherwise."""
    arr = np.asarray(landmarks, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == 2 * NUM_LANDMARKS:
        arr = arr.reshape(-1, NUM_LANDMARKS, 2)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_LANDMARKS, 2) or arr.shape[0] < 1:
        raise ConditionError(f"{where}: landmark sets must be [M >= 1, 5, 2] (or [M, 10]), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConditionError(f"{where}: landmark sets contain NaN or inf")
    return arr


def load_landmark_sets(directory: str | Path) -> np.ndarray:
    """All landmark sets of a shard directory as float32 [M, 5, 2], in shard order."""
    from fr.data.shards import list_shards, read_table

    parts = [read_table(p, columns=["landmarks"]).column("landmarks").combine_chunks().flatten().to_numpy()
             for p in list_shards(directory)]
    return check_landmark_sets(np.concatenate(parts).reshape(-1, 2 * NUM_LANDMARKS), f"landmark sets of {directory}")


def yaw_proxy(landmarks: np.ndarray) -> np.ndarray:
    """Horizontal nose offset from the eye midpoint over the inter-ocular distance [M] (0 = frontal)."""
    lm = check_landmark_sets(landmarks)
    eye_mid = (lm[:, 0] + lm[:, 1]) / 2
    iod = np.linalg.norm(lm[:, 1] - lm[:, 0], axis=1)
    return (lm[:, 2, 0] - eye_mid[:, 0]) / np.maximum(iod, 1e-6)


def pose_spread(landmarks: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` landmark sets at evenly spaced quantiles of the yaw proxy (left to right)."""
    if k < 1:
        raise ConditionError(f"pose_spread: k must be >= 1, got {k}")
    order = np.argsort(yaw_proxy(landmarks), kind="stable")
    return order[np.linspace(0, len(order) - 1, k).round().astype(np.int64)]


def condition_maps(landmarks: torch.Tensor | np.ndarray, image_size: int, channels: int) -> torch.Tensor | None:
    """Landmark sets [B, 5, 2] -> the DiT's landmark map [B, channels, S, S] (None when channels is 0)."""
    if channels == 0:
        return None
    sigma = LANDMARK_SIGMA_112 * image_size / 112.0
    return render_landmark_map(landmarks, size=image_size, sigma=sigma, channels=channels)


def condition_prototypes(weight: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 prototype rows (the DiT's condition vectors)."""
    if weight.ndim != 2:
        raise ConditionError(f"prototypes must be a [n, d] matrix, got shape {tuple(weight.shape)}")
    return F.normalize(weight.float(), dim=1)


def images_to_unit(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (the diffusion model's pixel range)."""
    t = torch.as_tensor(rgb)
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def unit_to_images(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 RGB [B, H, W, 3] (rounded, clipped)."""
    return ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_conditions(num_real: int, num_virtual: int, per_kind: int, landmarks: np.ndarray, poses: int
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fixed monitoring grid: ``per_kind`` evenly spaced real and virtual prototype rows x ``poses`` poses.

    Returns (prototype rows [G], landmark sets [G, 5, 2], tile labels), one grid row per identity and
    one column per pose (``G = identities * poses``); a kind with no prototypes is left out.
    """
    if per_kind < 1 or poses < 1:
        raise ConditionError(f"grid needs per_kind >= 1 and poses >= 1, got {per_kind}, {poses}")
    rows: list[int] = []
    names: list[str] = []
    for kind, start, count in (("r", 0, num_real), ("v", num_real, num_virtual)):
        if count > 0:
            picks = np.unique(np.linspace(0, count - 1, min(per_kind, count)).round().astype(np.int64))
            rows += [start + int(i) for i in picks]
            names += [f"{kind}{int(i)}" for i in picks]
    lm = check_landmark_sets(landmarks)[pose_spread(landmarks, poses)]
    proto_rows = np.repeat(np.asarray(rows, dtype=np.int64), poses)
    return proto_rows, np.tile(lm, (len(rows), 1, 1)), [n for n in names for _ in range(poses)]


# ------------------------------------------------------------------------------------------------
# per-row seeds and the work list


def row_seeds(seed: int, proto_index: np.ndarray, image_index: np.ndarray, num_landmarks: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(noise seed [R] int64 in [0, 2^63), landmark set index [R]) of each row, from (seed, prototype, image).

    numpy's SeedSequence hashes the three integers (so neighbouring rows get unrelated streams).
    """
    if num_landmarks < 1:
        raise ConditionError(f"num_landmarks must be >= 1, got {num_landmarks}")
    noise, lm = [], []
    for p, i in zip(np.asarray(proto_index).tolist(), np.asarray(image_index).tolist()):
        a, b = np.random.SeedSequence([int(seed), int(p), int(i)]).generate_state(2, dtype=np.uint64)
        noise.append(int(a) >> 1)
        lm.append(int(b) % num_landmarks)
    return np.asarray(noise, dtype=np.int64), np.asarray(lm, dtype=np.int64)


@dataclass(frozen=True)
class GenerationPlan:
    """The rows of a generated dataset, identity-major: identity ``j`` (label ``j``) owns rows
    ``offsets[j]:offsets[j+1]``, its images ``0..counts[j]-1`` sampled from prototype row ``proto_index[j]``.
    """

    proto_index: np.ndarray  # [I] prototype row of each generated identity (label order)
    identities: tuple[str, ...]  # [I] identity name of each label
    counts: np.ndarray  # [I] images to generate per identity (all >= 1)
    num_landmarks: int
    seed: int

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Columns of rows ``[start, stop)``: row, label, proto_index, image_index, landmark_index, noise_seed."""
        if not 0 <= start <= stop <= self.num_rows:
            raise ConditionError(f"rows [{start}, {stop}) outside the plan's {self.num_rows} rows")
        row = np.arange(start, stop, dtype=np.int64)
        offsets = self.offsets
        label = np.searchsorted(offsets, row, side="right") - 1
        image = row - offsets[label]
        proto = self.proto_index[label]
        noise_seed, lm_index = row_seeds(self.seed, proto, image, self.num_landmarks)
        return {"row": row, "label": label.astype(np.int64), "proto_index": proto.astype(np.int64),
                "image_index": image.astype(np.int64), "landmark_index": lm_index, "noise_seed": noise_seed}

    def chunks(self, rows_per_shard: int) -> list[tuple[int, int]]:
        """Consecutive ``[start, stop)`` row ranges of ``rows_per_shard`` rows (the last may be shorter)."""
        if rows_per_shard < 1:
            raise ConditionError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        n = self.num_rows
        return [(s, min(s + rows_per_shard, n)) for s in range(0, n, rows_per_shard)]

    def fingerprint(self) -> str:
        """SHA-1 of everything that decides the rows (a resumed run must match it)."""
        h = hashlib.sha1()
        for arr in (self.proto_index, self.counts):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(json.dumps([list(self.identities), self.num_landmarks, self.seed]).encode())
        return h.hexdigest()


def plan_generation(num_real: int, num_virtual: int, which: str, num_identities: int, images_per_identity: int,
                    num_landmarks: int, seed: int, augment_real_to: int = 0,
                    real_counts: np.ndarray | None = None, real_names: list[str] | None = None) -> GenerationPlan:
    """The work list of a generation job.

    ``which`` selects the prototype kinds (real rows first, then virtual); ``num_identities`` > 0 takes
    the first that many of each kind. Virtual identities get ``images_per_identity`` images; real ones
    too, unless ``augment_real_to`` > 0: then each real class gets ``augment_real_to - real_counts[c]``
    images (none when it already has that many; VIGFace §4.3 tops CASIA classes up to 50). Identities
    with no images are left out; labels are contiguous in the order kept. Names: ``virtual_{i}``
    (``i`` counted among the virtual rows) and the real identity names (``real_{i}`` without names).
    """
    if which not in WHICH:
        raise ConditionError(f"which must be one of {WHICH}, got {which!r}")
    if num_identities < 0 or images_per_identity < 0 or augment_real_to < 0:
        raise ConditionError("num_identities, images_per_identity and augment_real_to must be >= 0, got "
                             f"{num_identities}, {images_per_identity}, {augment_real_to}")
    if augment_real_to > 0 and which == "virtual":
        raise ConditionError("augment_real_to tops up real classes: use which=real or which=both")
    if real_names is not None and len(real_names) != num_real:
        raise ConditionError(f"{len(real_names)} real identity names for {num_real} real prototypes")
    proto, names, counts = [], [], []
    if which in ("real", "both"):
        n = num_real if num_identities == 0 else min(num_identities, num_real)
        if augment_real_to > 0:
            if real_counts is None or len(real_counts) != num_real:
                got = None if real_counts is None else len(real_counts)
                raise ConditionError(f"augment_real_to needs the image count of all {num_real} real classes, got {got}")
            want = np.maximum(augment_real_to - np.asarray(real_counts[:n], dtype=np.int64), 0)
        else:
            want = np.full(n, images_per_identity, dtype=np.int64)
        proto += list(range(n))
        names += [real_names[i] if real_names is not None else f"real_{i}" for i in range(n)]
        counts += want.tolist()
    if which in ("virtual", "both"):
        if num_virtual == 0:
            raise ConditionError(f"which={which!r} but the prototype file has no virtual prototypes")
        n = num_virtual if num_identities == 0 else min(num_identities, num_virtual)
        proto += [num_real + i for i in range(n)]
        names += [f"virtual_{i}" for i in range(n)]
        counts += [images_per_identity] * n
    keep = [j for j, c in enumerate(counts) if c > 0]
    if not keep:
        raise ConditionError("the generation plan is empty (no identity gets an image)")
    return GenerationPlan(np.asarray([proto[j] for j in keep], dtype=np.int64), tuple(names[j] for j in keep),
                          np.asarray([counts[j] for j in keep], dtype=np.int64), int(num_landmarks), int(seed))


# ------------------------------------------------------------------------------------------------
# sampling with per-row noise


@torch.no_grad()
def sample_seeded(model: torch.nn.Module, prototypes: torch.Tensor, landmark_maps: torch.Tensor | None,
                  seeds: np.ndarray | list[int], steps: int = 50, guidance: float = 4.0, eta: float = 0.0
                  ) -> torch.Tensor:
    """``generation.sampler.sample`` (DDIM + classifier-free guidance, VIGFace eq. 7) where row ``i``'s
    initial and step noise come from a CPU generator seeded with ``seeds[i]``: each row is a function of
    its seed alone, on any device and in any batch."""
    if len(seeds) != prototypes.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {prototypes.shape[0]} prototypes")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return sample(model, prototypes, landmark_maps, steps, guidance, generators, eta)
