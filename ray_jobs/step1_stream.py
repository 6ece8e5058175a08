"""``distill.step1_source=ray_data``: step 1's fresh batches (latents, images, teacher embeddings) made by
Ray Data actors and streamed into the Ray Train workers.

One dataset per rank (``step1_rank<r>``: rows = the steps ``first .. total - 1``, each mapped by a
:class:`distill.step1_maker.Step1Maker` actor to that rank's slice), passed unsplit
(``DataConfig(datasets_to_split=[])``) so that rank r iterates exactly its own dataset, in step order
(``preserve_order``): the student sees the same latents at the same step as with the generator in the
worker, on any number of workers, and a resumed job starts its datasets at the checkpoint's step.
Ray Data gets the CPUs the Train workers leave (checked before the run: on 2 CPUs an actor pool that
does not fit next to the workers hangs the stream). The re-sampled batch of the dynamic modes is still
made in the worker: it depends on the same batch's student output.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distill.kd_step import Step1Batch
from distill.step1_maker import Step1Maker, step1_batches

SOURCES = ("worker", "ray_data")


def dataset_name(rank: int) -> str:
    return f"step1_rank{rank}"


def check_stream_fits(d: Any, cluster_cpus: float) -> None:
    """ValueError when the Train workers plus the stream's actors need more CPUs than the cluster has."""
    need = d.num_workers * d.cpus_per_worker + d.stream_actors * d.num_workers * d.stream_cpus_per_actor
    if need > cluster_cpus + 1e-9:
        raise ValueError(
            f"distill.step1_source=ray_data: {d.num_workers} worker(s) x distill.cpus_per_worker {d.cpus_per_worker:g} + "
            f"{d.stream_actors * d.num_workers} stream actor(s) x distill.stream_cpus_per_actor {d.stream_cpus_per_actor:g} "
            f"= {need:g} CPUs, the cluster has {cluster_cpus:g}: lower distill.cpus_per_worker (e.g. 1.5 on 2 CPUs) "
            "so Ray Data never starves the workers, or the stream never starts")


def step1_datasets(d: Any, generator_kwargs: dict[str, Any], teacher: tuple[str, str], seed: int,
                   first: int, total: int) -> dict[str, Any]:
    """``{step1_rank<r>: Dataset}`` for ``d.num_workers`` ranks, from step ``first`` to ``total - 1``."""
    import ray.data

    # from in-memory blocks, not ray.data.range: a read task asks for a whole CPU, which a node whose
    # CPUs are all taken by the Train workers and the maker actors never has (the stream would hang)
    steps = np.arange(first, max(total, first), dtype=np.int64)
    blocks = np.array_split(steps, max(1, min(len(steps), 200)))
    out = {}
    for rank in range(d.num_workers):
        ds = ray.data.from_numpy(blocks)
        ds = ds.map_batches(lambda b: {"step": b["data"]}, batch_format="numpy", num_cpus=0)
        out[dataset_name(rank)] = ds.map_batches(
            Step1Maker, fn_constructor_kwargs={
                "generator_kwargs": generator_kwargs, "teacher": teacher, "global_batch": d.batch_size,
                "world": d.num_workers, "rank": rank, "seed": seed, "second_batch": d.mode == "static_2x",
                "device": "cuda" if d.stream_gpus_per_actor > 0 else "cpu", "threads": d.stream_threads},
            compute=ray.data.ActorPoolStrategy(size=d.stream_actors), batch_size=1, batch_format="numpy",
            num_cpus=d.stream_cpus_per_actor, num_gpus=d.stream_gpus_per_actor)
    return out


def dataset_config() -> Any:
    """Every rank's dataset whole to every worker (each iterates only its own), rows in step order."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=[], execution_options=options)


def worker_batches(rank: int, first: int, total: int, prefetch: int) -> Iterator[Step1Batch]:
    """Inside a Train worker: this rank's :class:`Step1Batch` from step ``first`` on."""
    import ray.train

    rows = ray.train.get_dataset_shard(dataset_name(rank)).iter_batches(
        batch_size=1, batch_format="numpy", prefetch_batches=prefetch)
    return step1_batches(rows, first, total)


def epoch_source(batches: Callable[[int], Iterator[Step1Batch]], steps_per_epoch: int
                 ) -> Callable[[int, int], Iterator[Step1Batch]]:
    """``epoch_batches(epoch, start)`` over one stream opened at the first step asked for (``batches(step)``)."""
    state: dict[str, Any] = {}

    def epoch_batches(epoch: int, start: int) -> Iterator[Step1Batch]:
        step = epoch * steps_per_epoch + start
        if "it" not in state:
            state["it"] = batches(step)
        return itertools.islice(state["it"], steps_per_epoch - start)

    return epoch_batches


def latest_checkpoint_step(run_dir: Path, state_file: str) -> int:
    """The smallest step among the checkpoints of a Ray Train run directory (0 when there is none): a stream
    opened there covers whichever of them Ray restores (a worker skips the rows it already trained on)."""
    steps = []
    for d in Path(run_dir).glob("checkpoint_*"):
        try:
            steps.append(int(json.loads((d / state_file).read_text())["step"]))
        except (OSError, ValueError, KeyError):
            continue  # a checkpoint being written or not ours
    return min(steps) if steps else 0
