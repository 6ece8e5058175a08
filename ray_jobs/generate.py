"""``generate``: a face dataset of prototype-conditioned faces (VIGFace), by Ray Data batch inference.

The work list (``generation.conditions.plan_generation``: which prototype, image index, landmark set
and noise seed every row gets) streams through ``ray_jobs.shard_stream`` into shards, sampled by any
generator behind ``generation.generator`` whose conditions are a prototype and landmarks (the DiT
today); the generator kind is recorded in the provenance. Output:
``<run.output_dir>/data/<generate.dataset_name>/train`` (standard shards, ``source=synthetic``) with
``dataset.json`` holding the provenance, then the privacy check (``ray_jobs.privacy_check``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.dataset_plots import sample_grid
from fr.data.shards import MANIFEST, DatasetInfo, build_dataset_info, read_dataset_json, write_dataset_json
from fr.prototypes import Prototypes, load_prototypes
from generation.conditions import (ConditionError, GenerationPlan, check_landmark_sets, load_landmark_sets,
                                   plan_generation)
from generation.generator import read_generator_info
from generation.sampler import validate_sampling
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, GenerateSection, to_dict
from ray_jobs.errors import InputError
from ray_jobs.privacy_check import log_privacy_verdict, run_privacy_check
from ray_jobs.shard_stream import ActorPool, check_plan_file, stream_plan_to_shards
from ray_jobs.tracking import Tracker, mlflow_run

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# inputs (driver, before any work)


def load_condition_landmarks(cfg: FacesynthConfig, model_size: int) -> tuple[np.ndarray, int]:
    """Landmark sets [M, 5, 2] in output pixels and the output image size.

    ``generate.landmarks_from`` is a shard directory (default: the train_dit dataset), whose image size
    is the output size, or a ``.npy`` array [M, 5, 2] / [M, 10] in ``generate.output_size`` pixels
    (default: the generator's size). The output is never smaller than the generator's images.
    """
    g = cfg.generate
    source = Path(g.landmarks_from) if g.landmarks_from else layout.dit_dataset_dir(cfg)
    if source.suffix == ".npy":
        landmarks = check_landmark_sets(np.load(source, allow_pickle=False), f"generate.landmarks_from {source}")
        size = g.output_size or model_size
    else:
        info = read_dataset_json(source)
        if g.output_size and g.output_size != info.image_size:
            raise ConditionError(f"generate.output_size {g.output_size} != {info.image_size}, the image size of the "
                                 f"landmark source {source} (leave output_size at 0)")
        landmarks, size = load_landmark_sets(source), info.image_size
    if size < model_size:
        raise ConditionError(f"generate: output size {size}px is smaller than the generator's {model_size}px images")
    return landmarks, size


def validate_generate_section(g: GenerateSection) -> None:
    try:
        validate_sampling(g.steps, g.guidance, g.eta)
    except ValueError as exc:  # its messages start with the parameter's name: name the config key
        raise InputError(f"generate.{exc}") from exc
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
        info = read_dataset_json(layout.dit_dataset_dir(cfg))
        if info.num_classes != protos.num_real or len(info.images_per_class) != info.num_classes:
            raise ConditionError(f"real-ID augmentation: {layout.dit_dataset_dir(cfg)} has {info.num_classes} classes "
                                 f"({len(info.images_per_class)} counted), the prototypes {protos.num_real} real rows")
        counts = np.asarray(info.images_per_class, dtype=np.int64)
    return plan_generation(protos.num_real, protos.num_virtual, g.which, g.num_identities, g.images_per_identity,
                           num_landmarks, cfg.run.seed, g.augment_real_to, counts, protos.identities)


def prepare_generation(cfg: FacesynthConfig) -> dict[str, Any]:
    """Every check that must pass before Ray starts; returns the generator info, prototypes, landmarks and plan."""
    g = cfg.generate
    validate_generate_section(g)
    model_dir = layout.generate_model_dir(cfg)
    gen_info = read_generator_info(model_dir)
    dims = gen_info["condition_dims"]
    if "prototype" not in dims:
        raise ConditionError(f"generate plans prototype-conditioned rows; the {gen_info['kind']} generator in "
                             f"{model_dir} is conditioned on {sorted(dims)} (use that method's generating job)")
    prefix = layout.generate_prototypes_prefix(cfg)
    protos = load_prototypes(prefix)
    if protos.embedding_size != dims["prototype"]:
        raise ConditionError(f"prototype file {prefix} has dimension {protos.embedding_size}, "
                             f"the generator in {model_dir} is conditioned on {dims['prototype']}")
    landmarks, output_size = load_condition_landmarks(cfg, gen_info["image_size"])
    plan = build_plan(cfg, protos, len(landmarks))
    return {"model_dir": model_dir, "generator": gen_info, "prototypes": protos, "landmarks": landmarks,
            "plan": plan, "output_size": output_size}


def generate_shards(cfg: FacesynthConfig, inputs: dict[str, Any], out_dir: Path, tracker: Tracker) -> dict[str, int]:
    g = cfg.generate
    sampler = {"model_dir": str(inputs["model_dir"].resolve()),
               "prototypes_prefix": str(layout.generate_prototypes_prefix(cfg).resolve()),
               "landmark_sets": inputs["landmarks"], "output_size": inputs["output_size"],
               "steps": g.steps, "guidance": g.guidance, "eta": g.eta}
    pool = ActorPool(g.num_actors, g.batch_size, g.gpus_per_actor, g.cpus_per_actor)
    return stream_plan_to_shards(inputs["plan"], sampler, out_dir, g.rows_per_shard, pool, tracker, ray_cfg=cfg.ray)


def run_generate(cfg: FacesynthConfig) -> DatasetInfo:
    g = cfg.generate
    inputs = prepare_generation(cfg)
    out_dir = layout.generate_out_dir(cfg)
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
    with mlflow_run(cfg, "generate") as tracker:  # Ray starts in stream_plan_to_shards if it takes Ray Data
        t0 = time.perf_counter()
        stats = generate_shards(cfg, inputs, out_dir, tracker)
        seconds = time.perf_counter() - t0
        gen = inputs["generator"]
        provenance = {"source": gen["kind"], "generator": gen["kind"], "model_dir": str(inputs["model_dir"].resolve()),
                      "model_config": gen["model_config"],
                      "prototypes": str(layout.generate_prototypes_prefix(cfg).resolve()),
                      "model_image_size": gen["image_size"],
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
    verdict = run_privacy_check(cfg, out_dir, tracker)
    log_privacy_verdict(verdict, tracker)
    return verdict
