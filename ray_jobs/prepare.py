"""``prepare``: write face shards (+ verification .bin for toy data) from toy identities, an image
folder or insightface RecordIO, fanned out over Ray tasks, logged to MLflow.

Layout under ``<run.output_dir>/data/<prepare.dataset_name>/``: ``train/part-*.parquet`` +
``train/dataset.json``, and for the toy source ``verify/<name>_verify.bin``.
Re-running resumes: finished shards are kept, only missing ones are written.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray

from evaluation.dataset_plots import sample_grid
from evaluation.verification import raw_pixel_floor
from fr.data.ingest import IngestStats
from fr.data.shards import (MANIFEST, SHARD_GLOB, DatasetInfo, ShardError, build_dataset_info, read_dataset_json,
                       shard_path, write_dataset_json, write_shard, write_shards)
from fr.data.toyfaces import ToyFaceConfig, class_sizes, iter_toy_records, make_verification_pairs
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, to_dict
from ray_jobs.tracking import Tracker, mlflow_run

log = logging.getLogger(__name__)


def toy_config(cfg: FacesynthConfig) -> ToyFaceConfig:
    t = cfg.prepare.toy
    return ToyFaceConfig(num_identities=t.num_identities, seed=cfg.run.seed, image_size=cfg.prepare.image_size,
                         min_images=t.min_images, max_images=t.max_images, tail_exponent=t.tail_exponent)


def split_identities(sizes: np.ndarray, rows_per_shard: int, min_chunks: int) -> list[list[int]]:
    """Contiguous identity chunks with about ``rows_per_shard`` images each (at least ``min_chunks``)."""
    total = int(sizes.sum())
    n_chunks = max(min_chunks, math.ceil(total / max(1, rows_per_shard)))
    n_chunks = min(n_chunks, len(sizes))
    bounds = np.searchsorted(np.cumsum(sizes), np.linspace(0, total, n_chunks + 1)[1:-1], side="right")
    edges = [0, *sorted(set(int(b) for b in bounds if 0 < b < len(sizes))), len(sizes)]
    return [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@ray.remote
def _toy_shard_task(toy: ToyFaceConfig, indices: list[int], path: str) -> int:
    return write_shard(path, list(iter_toy_records(toy, indices, "train")))


@ray.remote
def _toy_verify_task(toy: ToyFaceConfig, num_identities: int, num_pairs: int, seed: int, path: str) -> int:
    from fr.data.binfile import write_bin

    images, issame = make_verification_pairs(toy, num_identities, num_pairs, seed)
    write_bin(path, images, issame, overwrite=False)
    return len(issame)


@ray.remote
def _ingest_task(source: str, input_path: str, out_dir: str, rows_per_shard: int, image_size: int,
                 landmarks_file: str, image_format: str) -> dict:
    from fr.data.ingest import records_from_image_folder, records_from_recordio

    stats = IngestStats()
    if source == "folder":
        records = records_from_image_folder(input_path, stats, image_size=image_size,
                                            landmarks_file=landmarks_file or None, fmt=image_format)
    else:
        rec = Path(input_path)
        records = records_from_recordio(str(rec), str(rec.with_suffix(".idx")), stats, image_size=image_size)
    write_shards(out_dir, _contiguous_labels(records), rows_per_shard)
    return stats.as_dict()


def _contiguous_labels(records):
    """Relabel to 0..C-1 in order of first appearance (an identity whose images were all skipped
    leaves no gap)."""
    mapping: dict[int, int] = {}
    for rec in records:
        rec["label"] = mapping.setdefault(int(rec["label"]), len(mapping))
        yield rec


def _prepare_toy(cfg: FacesynthConfig, train_dir: Path, verify_dir: Path, tracker: Tracker) -> dict:
    toy = toy_config(cfg)
    sizes = class_sizes(toy.num_identities, toy.min_images, toy.max_images, toy.seed, toy.tail_exponent)
    chunks = split_identities(sizes, cfg.prepare.rows_per_shard, cfg.prepare.num_tasks)
    task = _toy_shard_task.options(num_cpus=cfg.ray.task_cpus)
    pending = {}
    for i, chunk in enumerate(chunks):
        path = shard_path(train_dir, i)
        if path.exists():
            continue  # resume: finished shards are complete (atomic rename)
        pending[task.remote(toy, chunk, str(path))] = i
    verify_path = verify_dir / f"{cfg.prepare.dataset_name}_verify.bin"
    vt = cfg.prepare.toy
    if vt.verify_pairs < 2 or vt.verify_identities < 4:
        raise ValueError("prepare.toy.verify_pairs must be >= 2 and prepare.toy.verify_identities >= 4")
    if not verify_path.exists():
        verify_dir.mkdir(parents=True, exist_ok=True)
        pending[_toy_verify_task.options(num_cpus=cfg.ray.task_cpus).remote(
            toy, vt.verify_identities, vt.verify_pairs, cfg.run.seed + 1, str(verify_path))] = -1
    done_shards = len(chunks) - sum(1 for v in pending.values() if v >= 0)
    log.info("prepare: %d shards (%d already done), verify .bin %s", len(chunks), done_shards,
             "pending" if -1 in pending.values() else "done")
    rows = 0
    remaining = list(pending)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        rows += ray.get(ready[0]) if pending[ready[0]] >= 0 else 0
        finished = len(chunks) - len([r for r in remaining if pending[r] >= 0])
        log.info("prepare: %d/%d shards written", finished, len(chunks))
        tracker.metrics({"shards_done": finished})
    return {"ingested": int(sizes.sum()), "skipped_corrupt": 0, "skipped_unaligned": 0,
            "verify_bin": str(verify_path), "shards_resumed": done_shards}


def run_prepare(cfg: FacesynthConfig) -> DatasetInfo:
    p = cfg.prepare
    if p.source not in ("toy", "folder", "recordio"):
        raise ValueError(f"prepare.source must be toy, folder or recordio, got {p.source!r}")
    if p.source != "toy" and not p.input_path:
        raise ValueError(f"prepare.source={p.source} needs prepare.input_path")
    out = layout.prepared_dir(cfg)
    train_dir, verify_dir = out / "train", out / "verify"
    if (train_dir / MANIFEST).exists() and not p.overwrite:
        info = read_dataset_json(train_dir)
        log.info("prepare: %s already complete (%d images, %d classes); pass prepare.overwrite=true to redo",
                 train_dir, info.num_images, info.num_classes)
        return info
    if p.overwrite and out.exists():
        shutil.rmtree(out)
    if p.source != "toy" and any(train_dir.glob(SHARD_GLOB)):
        raise ShardError(f"{train_dir} holds shards of an unfinished {p.source} ingest; "
                         f"pass prepare.overwrite=true to redo it")
    train_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)
    with mlflow_run(cfg, "prepare") as tracker:
        t0 = time.perf_counter()
        if p.source == "toy":
            stats = _prepare_toy(cfg, train_dir, verify_dir, tracker)
        else:
            stats = ray.get(_ingest_task.options(num_cpus=cfg.ray.task_cpus).remote(
                p.source, p.input_path, str(train_dir), p.rows_per_shard, p.image_size, p.landmarks_file,
                p.image_format))
        seconds = time.perf_counter() - t0
        provenance = {"source": p.source, "input_path": p.input_path, "seed": cfg.run.seed,
                      "config": to_dict(cfg)["prepare"], "mlflow_run_id": tracker.run_id}
        info = build_dataset_info(train_dir, p.image_size, provenance, extra={"ingest": stats})
        write_dataset_json(train_dir, info)
        metrics = {"num_images": info.num_images, "num_classes": info.num_classes, "seconds": seconds,
                   "images_per_second": info.num_images / max(seconds, 1e-9)}
        metrics.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
        if p.source == "toy":
            metrics.update(raw_pixel_floor(Path(stats["verify_bin"])))
        tracker.metrics(metrics)
        tracker.json(asdict(info) | {"identities": info.identities[:50]}, "dataset_summary.json")
        tracker.artifact(train_dir / MANIFEST)
        tracker.artifact(sample_grid(train_dir, out / "sample_grid.png"))
        for key, value in metrics.items():
            log.info("prepare: %s = %s", key, f"{value:.4f}" if isinstance(value, float) else value)
        if stats.get("examples"):
            log.warning("prepare: skipped inputs (first %d): %s", len(stats["examples"]), stats["examples"])
    return info
