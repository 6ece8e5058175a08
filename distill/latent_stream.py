"""The latent stream of a distillation run: the fresh batch of iteration ``step`` is a function of
(seed, step) only, cut into equal per-rank slices, so a resumed run (on any number of workers) sees the
same latents at the same step."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from distill.kd_step import Step1Batch
from distill.latent_generator import LatentGenerator


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A 31-bit seed for (run seed, iteration, stream): 0 fresh batch, 1 second fresh batch, 2 re-sampling noise."""
    return int(np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(1)[0] >> 1)


class LatentStream:
    def __init__(self, generator: LatentGenerator, global_batch: int, world: int, rank: int, seed: int,
                 second_batch: bool = False):
        if global_batch % world:
            raise ValueError(f"distill.batch_size {global_batch} does not divide across {world} workers")
        self.generator, self.global_batch, self.world, self.rank, self.seed = generator, global_batch, world, rank, seed
        self.local = global_batch // world
        self.second_batch = second_batch

    def _slice(self, step: int, stream: int):
        z = self.generator.sample_latents(self.global_batch, stream_seed(self.seed, step, stream))
        return z[self.rank * self.local:(self.rank + 1) * self.local]

    def batch(self, step: int) -> Step1Batch:
        return Step1Batch(z=self._slice(step, 0), noise_seed=stream_seed(self.seed, step, 2) + self.rank,
                          z2=self._slice(step, 1) if self.second_batch else None)

    def steps(self, first: int, stop: int) -> Iterator[Step1Batch]:
        for step in range(first, stop):
            yield self.batch(step)
