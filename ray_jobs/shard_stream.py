"""Generation plans -> face shards through Ray Data batch inference (shared by every generating job).

A plan is any object with ``num_rows``, ``identities``, ``fingerprint()``, ``chunks(rows_per_shard)``
and ``rows(start, stop)`` (columns ``row``, ``label``, ``noise_seed`` and the condition columns that
``generation.row_sampler.RowSampler`` reads), e.g. ``generation.conditions.GenerationPlan``. The plan
is cut into shard-sized chunks. Chunks whose shard already exists are skipped; the rest stream
``from_items(chunks) -> expand to rows -> map_batches(RowSampler)`` on an actor pool (the generator is
loaded once per actor) and the driver writes each chunk's shard atomically as soon as all its rows are
back, so an interrupted run loses only the shards in flight and a rerun regenerates exactly the
missing rows. ``PLAN_FILE`` refuses to resume shards written under another plan.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fr.data.shards import shard_path, write_shard
from generation.conditions import ConditionError
from generation.row_sampler import RowSampler
from ray_jobs.tracking import Tracker

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"


@dataclass
class ActorPool:
    """How the sampler actors are placed (from a job's config section)."""

    num_actors: int = 1
    batch_size: int = 64
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 0.5
    task_cpus: float = 0.5  # the chunk-expanding tasks


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


def _expand_chunks(batch: dict[str, np.ndarray], plan: Any) -> dict[str, np.ndarray]:
    """Chunk rows {chunk, start, stop} -> the work rows of those chunks (with their chunk index)."""
    parts = []
    for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"]):
        cols = plan.rows(int(start), int(stop))
        cols["chunk"] = np.full(len(cols["row"]), int(chunk), dtype=np.int64)
        parts.append(cols)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_chunk(out_dir: Path, chunk: int, rows: list[dict], plan: Any) -> int:
    rows.sort(key=lambda r: r["row"])
    records = [{"image": r["image"], "label": r["label"], "identity": plan.identities[r["label"]],
                "landmarks": r["landmarks"], "source": "synthetic"} for r in rows]
    return write_shard(shard_path(out_dir, chunk), records)


def stream_plan_to_shards(plan: Any, sampler_kwargs: dict[str, Any], out_dir: Path, rows_per_shard: int,
                          pool: ActorPool, tracker: Tracker, job: str = "generate") -> dict[str, int]:
    """Stream the missing chunks through the sampler actor pool; write each shard when its rows are in.

    ``sampler_kwargs``: the :class:`RowSampler` constructor arguments (model_dir, prototypes, landmarks,
    sampling options, output_size). Returns counts (shards total/resumed, rows generated).
    """
    chunks = plan.chunks(rows_per_shard)
    todo = [{"chunk": i, "start": s, "stop": e} for i, (s, e) in enumerate(chunks)
            if not shard_path(out_dir, i).exists()]
    log.info("%s: %d rows in %d shards, %d already written", job, plan.num_rows, len(chunks), len(chunks) - len(todo))
    stats = {"shards_total": len(chunks), "shards_resumed": len(chunks) - len(todo), "rows_generated": 0}
    if not todo:
        return stats
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(_expand_chunks, fn_kwargs={"plan": plan}, batch_size=1, batch_format="numpy",
                        num_cpus=pool.task_cpus)
    ds = ds.map_batches(RowSampler, fn_constructor_kwargs={**sampler_kwargs, "use_gpu": pool.gpus_per_actor > 0},
                        compute=ray.data.ActorPoolStrategy(size=pool.num_actors), batch_size=pool.batch_size,
                        batch_format="numpy", num_gpus=pool.gpus_per_actor, num_cpus=pool.cpus_per_actor)
    sizes = {c["chunk"]: c["stop"] - c["start"] for c in todo}
    pending: dict[int, list[dict]] = {}
    written, t0 = 0, time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["row"])):
            chunk = int(batch["chunk"][i])
            pending.setdefault(chunk, []).append({"row": int(batch["row"][i]), "label": int(batch["label"][i]),
                                                  "image": batch["image"][i], "landmarks": batch["landmarks"][i]})
            if len(pending[chunk]) == sizes[chunk]:
                stats["rows_generated"] += _write_chunk(out_dir, chunk, pending.pop(chunk), plan)
                written += 1
                done = stats["shards_resumed"] + written
                seconds = time.perf_counter() - t0
                tracker.metrics({"shards_done": done, "rows_generated": stats["rows_generated"],
                                 "images_per_s": stats["rows_generated"] / max(seconds, 1e-9)})
                log.info("%s: shard %d written (%d/%d shards)", job, chunk, done, len(chunks))
    if pending:
        raise RuntimeError(f"{job}: chunks {sorted(pending)} came back incomplete")
    return stats
