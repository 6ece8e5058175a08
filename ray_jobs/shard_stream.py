"""Generation plans -> face shards through one per-batch callable, on Ray Data or in this process
(shared by every generating job).

A plan is any object with ``num_rows``, ``identities``, ``fingerprint()``, ``chunks(rows_per_shard)``
and ``rows(start, stop)`` (columns ``row``, ``label``, ``noise_seed`` and the condition columns that
``generation.row_sampler.RowSampler`` reads), e.g. ``generation.conditions.GenerationPlan``. The plan
is cut into shard-sized chunks and each chunk into batches of ``batch_size`` rows (the last batch of a
chunk may be shorter). Chunks whose shard already exists are skipped; the batches of the others go,
in plan order, through :class:`PlanBatchSampler` (plan rows -> ``RowSampler`` -> encoded faces; the
generator is loaded once per instance): on a Ray Data actor pool (one batch per call), or, when Ray is
local and the work is small, through one instance in this process (``ray_jobs.local_path``). Either
way the same batches reach the generator, so the shards are the same bytes. The driver writes each
chunk's shard atomically as soon as all its rows are back, so an interrupted run loses only the shards
in flight and a rerun regenerates exactly the missing rows. ``PLAN_FILE`` refuses to resume shards
written under another plan.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from fr.data.shards import shard_path, write_shard
from generation.conditions import ConditionError
from generation.row_sampler import RowSampler
from ray_jobs.cluster import init_ray
from ray_jobs.config import RaySection
from ray_jobs.local_path import choose_path, torch_threads
from ray_jobs.progress import ProgressLine
from ray_jobs.tracking import Tracker

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"


@dataclass
class ActorPool:
    """How the sampler actors are placed (from a job's config section)."""

    num_actors: int = 1
    batch_size: int = 64
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 0.5  # also its torch threads (at least 1), in Ray Data or in this process

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_actor))


def check_plan_file(out_dir: Path, plan: Any, rows_per_shard: int, setting: str = "generate.dataset_name") -> None:
    """Record the plan on the first run; refuse to resume shards written under another plan."""
    record = {"fingerprint": plan.fingerprint(), "num_rows": plan.num_rows, "rows_per_shard": rows_per_shard}
    path = out_dir / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != record:
            raise ConditionError(f"{out_dir} holds shards of another generation plan ({saved} vs now {record}); "
                                 f"choose another {setting} or delete the folder")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def plan_batches(chunks: list[tuple[int, int]], todo: list[int], batch_size: int) -> list[dict[str, int]]:
    """Batch descriptors ``{chunk, start, stop}`` of the chunks ``todo``, in plan order; a batch never
    spans two chunks."""
    return [{"chunk": c, "start": b, "stop": min(b + batch_size, chunks[c][1])}
            for c in todo for b in range(chunks[c][0], chunks[c][1], batch_size)]


class PlanBatchSampler:
    """The per-batch callable of both paths: batch descriptors -> plan rows -> sampled, encoded faces.

    Input columns ``chunk``, ``start``, ``stop`` (one row per batch); output: the ``RowSampler`` columns
    (``row``, ``label``, ``chunk``, ``image``, ``landmarks``) of every row of those batches."""

    def __init__(self, plan: Any, sampler_kwargs: dict[str, Any], use_gpu: bool, threads: int):
        torch.set_num_threads(threads)
        self.plan = plan
        self.sampler = RowSampler(**sampler_kwargs, use_gpu=use_gpu)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"]):
            cols = self.plan.rows(int(start), int(stop))
            cols["chunk"] = np.full(len(cols["row"]), int(chunk), dtype=np.int64)
            parts.append(self.sampler(cols))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_chunk(out_dir: Path, chunk: int, rows: list[dict], plan: Any) -> int:
    rows.sort(key=lambda r: r["row"])
    records = [{"image": r["image"], "label": r["label"], "identity": plan.identities[r["label"]],
                "landmarks": r["landmarks"], "source": "synthetic"} for r in rows]
    return write_shard(shard_path(out_dir, chunk), records)


def _in_process(batches: list[dict[str, int]], plan: Any, sampler_kwargs: dict[str, Any], pool: ActorPool
                ) -> Iterator[dict[str, np.ndarray]]:
    """The local fast path: one :class:`PlanBatchSampler` in this process, the batches in plan order (it sets
    torch's threads as its actor would: the caller restores them)."""
    sampler = PlanBatchSampler(plan, sampler_kwargs, pool.gpus_per_actor > 0, pool.threads)
    for b in batches:
        yield sampler({k: np.asarray([v], dtype=np.int64) for k, v in b.items()})


def _on_ray(batches: list[dict[str, int]], plan: Any, sampler_kwargs: dict[str, Any], pool: ActorPool
            ) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data: one batch descriptor per block and per call of a :class:`PlanBatchSampler` actor."""
    ds = ray.data.from_items(batches, override_num_blocks=len(batches))
    ds = ds.map_batches(PlanBatchSampler, fn_constructor_kwargs={
                            "plan": plan, "sampler_kwargs": sampler_kwargs, "use_gpu": pool.gpus_per_actor > 0,
                            "threads": pool.threads},
                        compute=ray.data.ActorPoolStrategy(size=pool.num_actors), batch_size=1,
                        batch_format="numpy", num_gpus=pool.gpus_per_actor, num_cpus=pool.cpus_per_actor)
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def stream_plan_to_shards(plan: Any, sampler_kwargs: dict[str, Any], out_dir: Path, rows_per_shard: int,
                          pool: ActorPool, tracker: Tracker, job: str = "generate",
                          ray_cfg: RaySection | None = None) -> dict[str, int]:
    """Sample the missing chunks (on the path ``ray_jobs.local_path.choose_path`` picks for ``ray_cfg``,
    default ``RaySection()``); write each shard when its rows are in.

    ``sampler_kwargs``: the :class:`RowSampler` constructor arguments (model_dir, prototypes, landmarks,
    sampling options, output_size). Returns counts (shards total/resumed, rows generated). Ray is
    started here only for the Ray Data path.
    """
    ray_cfg = ray_cfg or RaySection()
    chunks = plan.chunks(rows_per_shard)
    todo = [i for i in range(len(chunks)) if not shard_path(out_dir, i).exists()]
    stats = {"shards_total": len(chunks), "shards_resumed": len(chunks) - len(todo), "rows_generated": 0}
    if not todo:
        log.info("%s: %d rows in %d shards, all written", job, plan.num_rows, len(chunks))
        return stats
    rows = sum(chunks[i][1] - chunks[i][0] for i in todo)
    choice = choose_path(ray_cfg, "generation", rows, pool.num_actors)
    log.info("%s: %d rows in %d shards, %d already written; %d rows %s (%s)", job, plan.num_rows, len(chunks),
             stats["shards_resumed"], rows, choice.name, choice.reason)
    batches = plan_batches(chunks, todo, pool.batch_size)
    if not choice.in_process:
        init_ray(ray_cfg)
    sizes = {c: chunks[c][1] - chunks[c][0] for c in todo}
    pending: dict[int, list[dict]] = {}
    progress = ProgressLine(job, len(chunks), "shards", start=stats["shards_resumed"])
    done = stats["shards_resumed"]
    with torch_threads():
        outputs = (_in_process if choice.in_process else _on_ray)(batches, plan, sampler_kwargs, pool)
        for batch in outputs:
            for i in range(len(batch["row"])):
                chunk = int(batch["chunk"][i])
                pending.setdefault(chunk, []).append({"row": int(batch["row"][i]), "label": int(batch["label"][i]),
                                                      "image": batch["image"][i], "landmarks": batch["landmarks"][i]})
                if len(pending[chunk]) == sizes[chunk]:
                    stats["rows_generated"] += _write_chunk(out_dir, chunk, pending.pop(chunk), plan)
                    done += 1
                    img_s = stats["rows_generated"] / max(progress.elapsed(), 1e-9)
                    tracker.metrics({"shards_done": done, "rows_generated": stats["rows_generated"],
                                     "images_per_s": img_s})
                    log.info(progress(done, f"rows {stats['rows_generated']}/{rows}", f"{img_s:.3g} img/s"))
    if pending:
        raise RuntimeError(f"{job}: chunks {sorted(pending)} came back incomplete")
    return stats
