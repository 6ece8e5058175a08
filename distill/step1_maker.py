"""Step 1's fresh batches made away from the student: latents, images and teacher embeddings of iteration
``step`` for one rank, as numpy rows (what a Ray Data stream carries to a training worker), and back.

A :class:`Step1Maker` holds its own generator and teacher (built from their specs in the process that
calls it) and makes exactly what :class:`distill.latent_stream.LatentStream` would hand the worker
(the same latents at the same step, so the student sees the same faces either way), plus the images and
teacher embeddings the worker would otherwise compute itself. Re-sampling (step 2 of the dynamic modes)
is not made here: it depends on the same batch's student output.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from distill.kd_step import Step1Batch
from distill.latent_stream import LatentStream


class Step1Maker:
    """``__call__({"step": int64[n]}) -> {"step", "z", "noise_seed", "images", "e_teacher"[, "z2", "images2",
    "e_teacher2"]}`` with one row per step (this rank's slice of the global batch).

    ``generator_kwargs``: :func:`distill.build.build_latent_generator`'s arguments; ``teacher``:
    (path, arch) for :func:`distill.teachers.load_teacher`; ``threads``: torch threads in this process.
    """

    def __init__(self, generator_kwargs: dict[str, Any], teacher: tuple[str, str], global_batch: int, world: int,
                 rank: int, seed: int, second_batch: bool, device: str = "cpu", threads: int = 1):
        from distill.build import build_latent_generator
        from distill.teachers import load_teacher

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.generator = build_latent_generator(**{**generator_kwargs, "device": device})
        self.teacher = load_teacher(teacher[0], teacher[1], device=self.device)
        self.stream = LatentStream(self.generator, global_batch, world, rank, seed, second_batch=second_batch)

    def _made(self, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            images = self.generator.synthesize(self.generator.to_w(z.to(torch.float32))).to(self.device)
            return images.float().cpu().numpy(), self.teacher(images).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {}
        for step in np.asarray(batch["step"], dtype=np.int64).tolist():
            b = self.stream.batch(step)
            row = {"step": step, "z": b.z.numpy(), "noise_seed": b.noise_seed}
            row["images"], row["e_teacher"] = self._made(b.z)
            if b.z2 is not None:
                row["z2"] = b.z2.numpy()
                row["images2"], row["e_teacher2"] = self._made(b.z2)
            for k, v in row.items():
                rows.setdefault(k, []).append(v)
        return {k: np.stack(v) if isinstance(v[0], np.ndarray) else np.asarray(v, dtype=np.int64)
                for k, v in rows.items()}


def _tensor(row: dict[str, np.ndarray], key: str, i: int) -> torch.Tensor | None:
    return torch.from_numpy(np.ascontiguousarray(row[key][i])) if key in row else None


def step1_batches(rows: Iterable[dict[str, np.ndarray]], first: int, stop: int) -> Iterator[Step1Batch]:
    """The :class:`Step1Batch` of steps ``first .. stop - 1`` from a stream of :class:`Step1Maker` rows (any
    number of steps per row, in step order). Rows before ``first`` are skipped (a worker restarted from a
    checkpoint on a stream that began earlier); a gap or a step out of order is an error, never a silent
    change of the latent stream."""
    expect = first
    for row in rows:
        for i, step in enumerate(np.asarray(row["step"]).tolist()):
            if step < expect:
                continue
            if step != expect:
                raise RuntimeError(f"distill: the step-1 stream skipped from step {expect} to {step} "
                                   "(its rows must arrive in step order)")
            yield Step1Batch(z=_tensor(row, "z", i), noise_seed=int(row["noise_seed"][i]),
                             images=_tensor(row, "images", i), e_teacher=_tensor(row, "e_teacher", i),
                             z2=_tensor(row, "z2", i), images2=_tensor(row, "images2", i),
                             e_teacher2=_tensor(row, "e_teacher2", i))
            expect += 1
            if expect >= stop:
                return
    if expect < stop:
        raise RuntimeError(f"distill: the step-1 stream ended at step {expect}, before step {stop}")
