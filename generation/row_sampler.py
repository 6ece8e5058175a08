"""Work-list rows -> encoded faces through any generator (what ``generate`` runs on a Ray Data actor pool)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from generation.conditions import ConditionError, check_landmark_sets
from generation.generator import load_generator
from generation.landmark_map import NUM_LANDMARKS

COND_PREFIX = "cond_"  # work-list columns handed to the generator as conditions (prefix stripped)
PASSED_COLUMNS = ("row", "label", "chunk")


class RowSampler:
    """Loads a generator (and the prototypes, if rows name them) once; turns work-list rows into faces.

    A plain callable class. Each call takes columns of a generation plan and returns ``row``, ``label``,
    ``chunk`` (passed through), ``image`` (encoded bytes) and ``landmarks`` ([B, 10] in ``output_size``
    pixels). Conditions are built from the columns: ``proto_index`` -> ``prototype`` (a row of the
    prototype matrix), ``landmark_index`` -> ``landmarks`` (a landmark set, scaled to the generator's
    size), and every ``cond_<name>`` column -> ``<name>``; ``noise_seed`` seeds each row. A generator
    smaller than ``output_size`` has its faces upscaled (bicubic). Without a landmark condition the
    stored landmarks are the ArcFace template (the generators make aligned faces).
    """

    def __init__(self, model_dir: str, landmark_sets: np.ndarray | None = None, prototypes_prefix: str | None = None,
                 image_format: str = "jpg", use_gpu: bool = False, output_size: int | None = None,
                 **sampling: Any):
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.generator = load_generator(model_dir, device=device, **sampling)
        self.prototypes = None
        if prototypes_prefix:
            from fr.prototypes import load_prototypes

            self.prototypes = load_prototypes(prototypes_prefix).weight.float()
        self.landmark_sets = None if landmark_sets is None else check_landmark_sets(landmark_sets)
        self.image_format = image_format
        self.output_size = int(output_size or self.generator.image_size)
        if self.output_size < self.generator.image_size:
            raise ConditionError(f"output_size {self.output_size} is smaller than the generator's "
                                 f"{self.generator.image_size}px images")

    def conditions(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(the generator's conditions, the landmarks to store [B, 5, 2] in output pixels)."""
        n = len(batch["noise_seed"])
        cond: dict[str, np.ndarray] = {}
        if "proto_index" in batch:
            if self.prototypes is None:
                raise ConditionError("rows name prototypes (proto_index) but no prototypes_prefix was given")
            index = torch.from_numpy(np.array(batch["proto_index"], dtype=np.int64))  # copy: Ray arrays are read-only
            cond["prototype"] = self.prototypes[index].numpy()
        if "landmark_index" in batch:
            if self.landmark_sets is None:
                raise ConditionError("rows name landmark sets (landmark_index) but none were given")
            lm = self.landmark_sets[np.asarray(batch["landmark_index"], dtype=np.int64)]
            cond["landmarks"] = lm * np.float32(self.generator.image_size / self.output_size)
        else:
            from fr.data.alignment import template_for_size

            lm = np.broadcast_to(template_for_size(self.output_size).astype(np.float32), (n, NUM_LANDMARKS, 2))
        for key in batch:
            if key.startswith(COND_PREFIX):
                cond[key[len(COND_PREFIX):]] = np.asarray(batch[key])
        return cond, lm

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fr.data.images import encode_image, resize_faces

        cond, lm = self.conditions(batch)
        faces = self.generator.sample(cond, [int(s) for s in batch["noise_seed"]])
        images = np.empty(len(faces), dtype=object)
        images[:] = [encode_image(rgb, self.image_format) for rgb in resize_faces(faces, self.output_size)]
        passed = {k: np.asarray(batch[k]) for k in PASSED_COLUMNS if k in batch}
        return {**passed, "image": images, "landmarks": np.ascontiguousarray(lm).reshape(len(lm), 2 * NUM_LANDMARKS)}
