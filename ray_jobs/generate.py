"""``generate``: a face dataset from the exported VIGFace DiT, by Ray Data batch inference.

The work list (``generation.conditions.plan_generation``: which prototype, image index, landmark set
and noise seed every row gets) is cut into shard-sized chunks. Chunks whose shard already exists are
skipped; the rest stream ``from_items(chunks) -> expand to rows -> map_batches(RowSampler)`` on an
actor pool (the DiT is loaded once per actor) and the driver writes each chunk's shard atomically as
soon as all its rows are back, so an interrupted run loses only the shards in flight and a rerun
regenerates exactly the missing rows. Output: ``<run.output_dir>/data/<generate.dataset_name>/train``
(standard shards, ``source=synthetic``) with ``dataset.json`` holding the provenance.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fr.prototypes import Prototypes, load_prototypes
from fr.data.shards import (MANIFEST, DatasetInfo, build_dataset_info, read_dataset_json, shard_path, write_dataset_json,
                       write_shard)
from generation.conditions import (ConditionError, GenerationPlan, RowSampler, check_landmark_sets, load_landmark_sets,
                                   plan_generation)
from generation.dit import CONFIG_FILE, WEIGHTS_FILE, DiTConfig
from generation.sampler import validate_sampling
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, GenerateSection, to_dict
from ray_jobs.prepare import sample_grid
from ray_jobs.tracking import Tracker, mlflow_run
from ray_jobs.train_dit import dit_dataset_dir, dit_export_dir, dit_prototypes_prefix

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"


# ------------------------------------------------------------------------------------------------
# inputs (driver, before any work)


def generate_dit_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.generate.dit) if cfg.generate.dit else dit_export_dir(cfg)


def generate_prototypes_prefix(cfg: FacesynthConfig) -> Path:
    return Path(cfg.generate.prototypes) if cfg.generate.prototypes else dit_prototypes_prefix(cfg)


def generate_out_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.run.output_dir) / "data" / cfg.generate.dataset_name / "train"


def read_dit_config(dit_dir: Path) -> DiTConfig:
    """The exported DiT's architecture (weights are only loaded by the actors)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (dit_dir / name).is_file():
            raise FileNotFoundError(f"generate.dit: {dit_dir / name} not found (train_dit exports it)")
    return DiTConfig.from_dict(json.loads((dit_dir / CONFIG_FILE).read_text()))


def load_condition_landmarks(cfg: FacesynthConfig, dit_size: int) -> tuple[np.ndarray, int]:
    """Landmark sets [M, 5, 2] in output pixels and the output image size.

    ``generate.landmarks_from`` is a shard directory (default: the train_dit dataset), whose image size
    is the output size, or a ``.npy`` array [M, 5, 2] / [M, 10] in ``generate.output_size`` pixels
    (default: the DiT's size). The output is never smaller than the DiT's images.
    """
    g = cfg.generate
    source = Path(g.landmarks_from) if g.landmarks_from else dit_dataset_dir(cfg)
    if source.suffix == ".npy":
        landmarks = check_landmark_sets(np.load(source, allow_pickle=False), f"generate.landmarks_from {source}")
        size = g.output_size or dit_size
    else:
        info = read_dataset_json(source)
        if g.output_size and g.output_size != info.image_size:
            raise ConditionError(f"generate.output_size {g.output_size} != {info.image_size}, the image size of the "
                                 f"landmark source {source} (leave output_size at 0)")
        landmarks, size = load_landmark_sets(source), info.image_size
    if size < dit_size:
        raise ConditionError(f"generate: output size {size}px is smaller than the DiT's {dit_size}px images")
    return landmarks, size


def validate_generate_section(g: GenerateSection) -> None:
    validate_sampling(g.steps, g.guidance, g.eta)
    for key in ("batch_size", "num_actors", "rows_per_shard"):
        if getattr(g, key) < 1:
            raise ConditionError(f"generate.{key} must be >= 1, got {getattr(g, key)}")
    if g.gpus_per_actor < 0 or g.cpus_per_actor <= 0:
        raise ConditionError(f"generate.gpus_per_actor must be >= 0 and cpus_per_actor > 0, got "
                             f"{g.gpus_per_actor}, {g.cpus_per_actor}")
    if not g.dataset_name or "/" in g.dataset_name:
        raise ConditionError(f"generate.dataset_name must be a plain folder name, got {g.dataset_name!r}")


def build_plan(cfg: FacesynthConfig, protos: Prototypes, num_landmarks: int) -> GenerationPlan:
    """The work list; real-ID augmentation reads the class sizes from the real dataset's dataset.json."""
    g = cfg.generate
    counts = None
    if g.augment_real_to > 0:
        info = read_dataset_json(dit_dataset_dir(cfg))
        if info.num_classes != protos.num_real or len(info.images_per_class) != info.num_classes:
            raise ConditionError(f"real-ID augmentation: {dit_dataset_dir(cfg)} has {info.num_classes} classes "
                                 f"({len(info.images_per_class)} counted), the prototypes {protos.num_real} real rows")
        counts = np.asarray(info.images_per_class, dtype=np.int64)
    return plan_generation(protos.num_real, protos.num_virtual, g.which, g.num_identities, g.images_per_identity,
                           num_landmarks, cfg.run.seed, g.augment_real_to, counts, protos.identities)


def prepare_generation(cfg: FacesynthConfig) -> dict[str, Any]:
    """Every check that must pass before Ray starts; returns the DiT config, prototypes, landmarks and plan."""
    g = cfg.generate
    validate_generate_section(g)
    dit_dir = generate_dit_dir(cfg)
    model_cfg = read_dit_config(dit_dir)
    protos = load_prototypes(generate_prototypes_prefix(cfg))
    if protos.embedding_size != model_cfg.cond_dim:
        raise ConditionError(f"prototype file {generate_prototypes_prefix(cfg)} has dimension {protos.embedding_size}, "
                             f"the DiT in {dit_dir} is conditioned on {model_cfg.cond_dim}")
    landmarks, output_size = load_condition_landmarks(cfg, model_cfg.image_size)
    plan = build_plan(cfg, protos, len(landmarks))
    return {"dit_dir": dit_dir, "model_config": model_cfg, "prototypes": protos, "landmarks": landmarks, "plan": plan,
            "output_size": output_size}


# ------------------------------------------------------------------------------------------------
# resume bookkeeping


def check_plan_file(out_dir: Path, plan: GenerationPlan, rows_per_shard: int) -> None:
    """Record the plan on the first run; refuse to resume shards written under another plan."""
    record = {"fingerprint": plan.fingerprint(), "num_rows": plan.num_rows, "rows_per_shard": rows_per_shard}
    path = out_dir / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != record:
            raise ConditionError(f"{out_dir} holds shards of another generation plan ({saved} vs now {record}); "
                                 f"choose another generate.dataset_name or delete the folder")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def _expand_chunks(batch: dict[str, np.ndarray], plan: GenerationPlan) -> dict[str, np.ndarray]:
    """Chunk rows {chunk, start, stop} -> the work rows of those chunks (with their chunk index)."""
    parts = []
    for chunk, start, stop in zip(batch["chunk"], batch["start"], batch["stop"]):
        cols = plan.rows(int(start), int(stop))
        cols["chunk"] = np.full(len(cols["row"]), int(chunk), dtype=np.int64)
        parts.append(cols)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _write_chunk(out_dir: Path, chunk: int, rows: list[dict], plan: GenerationPlan) -> int:
    rows.sort(key=lambda r: r["row"])
    records = [{"image": r["image"], "label": r["label"], "identity": plan.identities[r["label"]],
                "landmarks": r["landmarks"], "source": "synthetic"} for r in rows]
    return write_shard(shard_path(out_dir, chunk), records)


# ------------------------------------------------------------------------------------------------
# the job


def generate_shards(cfg: FacesynthConfig, inputs: dict[str, Any], out_dir: Path, tracker: Tracker) -> dict[str, int]:
    """Stream the missing chunks through the sampler actor pool; write each shard when its rows are in."""
    g, plan = cfg.generate, inputs["plan"]
    chunks = plan.chunks(g.rows_per_shard)
    todo = [{"chunk": i, "start": s, "stop": e} for i, (s, e) in enumerate(chunks)
            if not shard_path(out_dir, i).exists()]
    log.info("generate: %d rows in %d shards, %d already written", plan.num_rows, len(chunks), len(chunks) - len(todo))
    stats = {"shards_total": len(chunks), "shards_resumed": len(chunks) - len(todo), "rows_generated": 0}
    if not todo:
        return stats
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(_expand_chunks, fn_kwargs={"plan": plan}, batch_size=1, batch_format="numpy",
                        num_cpus=cfg.ray.task_cpus)
    ds = ds.map_batches(
        RowSampler,
        fn_constructor_kwargs={"dit_dir": str(inputs["dit_dir"].resolve()),
                               "prototypes_prefix": str(generate_prototypes_prefix(cfg).resolve()),
                               "landmark_sets": inputs["landmarks"], "steps": g.steps, "guidance": g.guidance,
                               "eta": g.eta, "use_gpu": g.gpus_per_actor > 0, "output_size": inputs["output_size"]},
        compute=ray.data.ActorPoolStrategy(size=g.num_actors), batch_size=g.batch_size, batch_format="numpy",
        num_gpus=g.gpus_per_actor, num_cpus=g.cpus_per_actor)
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
                log.info("generate: shard %d written (%d/%d shards)", chunk, done, len(chunks))
    if pending:
        raise RuntimeError(f"generate: chunks {sorted(pending)} came back incomplete")
    return stats


def run_generate(cfg: FacesynthConfig) -> DatasetInfo:
    g = cfg.generate
    inputs = prepare_generation(cfg)
    out_dir = generate_out_dir(cfg)
    plan: GenerationPlan = inputs["plan"]
    check_plan_file(out_dir, plan, g.rows_per_shard)  # also refuses a finished dataset of another plan
    if (out_dir / MANIFEST).exists():
        info = read_dataset_json(out_dir)
        log.info("generate: %s already complete (%d images, %d identities)", out_dir, info.num_images, info.num_classes)
        if g.privacy_check and "privacy" not in info.extra:  # finished before its privacy check ran
            init_ray(cfg.ray)
            with mlflow_run(cfg, "generate-privacy") as tracker:
                _privacy_check(cfg, out_dir, tracker)
            info = read_dataset_json(out_dir)
        return info
    init_ray(cfg.ray)
    with mlflow_run(cfg, "generate") as tracker:
        t0 = time.perf_counter()
        stats = generate_shards(cfg, inputs, out_dir, tracker)
        seconds = time.perf_counter() - t0
        provenance = {"source": "vigface_dit", "dit": str(inputs["dit_dir"].resolve()),
                      "dit_config": inputs["model_config"].to_dict(),
                      "prototypes": str(generate_prototypes_prefix(cfg).resolve()),
                      "dit_image_size": inputs["model_config"].image_size,
                      "seed": cfg.run.seed, "steps": g.steps, "guidance": g.guidance, "eta": g.eta,
                      "config": to_dict(cfg)["generate"], "mlflow_run_id": tracker.run_id}
        extra = {"prototype_rows": plan.proto_index.tolist(), "num_real_prototypes": inputs["prototypes"].num_real,
                 "plan_fingerprint": plan.fingerprint(), "landmark_sets": len(inputs["landmarks"])}
        info = build_dataset_info(out_dir, inputs["output_size"], provenance, extra=extra)
        if info.num_images != plan.num_rows:
            raise RuntimeError(f"generate: {info.num_images} rows on disk, the plan has {plan.num_rows}")
        write_dataset_json(out_dir, info)
        tracker.metrics({"num_images": info.num_images, "num_classes": info.num_classes, "seconds": seconds, **stats})
        tracker.artifact(out_dir / MANIFEST)
        tracker.artifact(sample_grid(out_dir, out_dir.parent / "sample_grid.png"))
        log.info("generate: %d images of %d identities in %s (%.1f s)", info.num_images, info.num_classes, out_dir,
                 seconds)
        if g.privacy_check:
            _privacy_check(cfg, out_dir, tracker)
            info = read_dataset_json(out_dir)
    return info


def _privacy_check(cfg: FacesynthConfig, out_dir: Path, tracker: Tracker) -> dict:
    """Identity-leakage check against the real dataset; the verdict goes into dataset.json and MLflow."""
    from ray_jobs.evaluate import run_privacy_check

    verdict = run_privacy_check(cfg, out_dir, tracker)
    status = "PASSED (privacy-free)" if verdict["passed"] else f"FAILED ({verdict['reason']}: not privacy-free)"
    log.log(logging.INFO if verdict["passed"] else logging.WARNING,
            "generate: privacy check %s: %.1f%% of synthetic identities above the real nearest-negative level %.3f "
            "(gate %.1f%%)", status, 100 * verdict["leak_fraction"], verdict["real_level"],
            100 * cfg.evaluate.max_leak_fraction)
    tracker.tags({"privacy": "passed" if verdict["passed"] else "failed"})
    return verdict
