"""``train_dit``: VIGFace stage 2, the prototype + landmark conditioned DiT, on Ray Train (DDP).

The driver checks every input before Ray starts (dataset, stage-1 prototypes and FR backbone, DiT
size), starts one MLflow run and a ``TorchTrainer``; each worker runs :func:`train_loop`, plain
PyTorch from ``generation`` (iteration-based: ``max_steps`` steps of the global batch). Checkpoints
every ``checkpoint_every`` steps hold model, EMA, AdamW and the step (which fixes the data position);
rerunning the same ``run.name`` resumes from the latest one and ``FailureConfig`` restarts failed
workers from it. Rank 0 logs loss terms and images/s, and at ``sample_every`` steps and at the end a
grid of EMA samples; with ``eval_every`` > 0 also the learning curve ``fidelity/*`` of fixed probe samples
measured by the independent evaluator (``evaluation.independent_evaluator``). The driver exports the EMA DiT to ``<run.output_dir>/dit/<run.name>/``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from fr.backbones import load_backbone
from fr.prototypes import load_prototypes
from fr.data.shards import content_fingerprint, list_shards, read_dataset_json
from evaluation.curves import plot_curves
from evaluation.embed import load_evaluator, read_shard_faces
from evaluation.independent_evaluator import FidelityProbe, flat_fidelity
from fr.training import GlobalBatchOrder, NonFiniteGuard, autocast_dtype
from generation.checkpoint import STATE_FILE, export_ema, load_dit_checkpoint, save_dit_checkpoint, weights_sha1
from generation.conditions import condition_prototypes, grid_conditions
from generation.dit import DiT, DiTConfig, dit_config
from generation.dit_probe import probe_rows, sample_rows
from generation.ema import EMA
from generation.sampler import validate_sampling
from generation.trainer_step import (DiTInputError, DiTShardDataset, check_dit_inputs, check_fr_backbone,
                                     dit_train_step, frozen, grid_samples, step_generator)
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, TrainDiTSection, to_dict
from ray_jobs.tracking import mlflow_run, tracking_uri
from ray_jobs import layout
from ray_jobs.train_common import (TrainerParts, absolute_uri, clear_stopped, fit_checked, make_torch_trainer,
                                   run_worker_loop, worker_context)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# paths and validation (driver)


def dit_model_config(t: TrainDiTSection) -> DiTConfig:
    """The DiT of ``train_dit.size`` with ``model_kwargs`` overrides and the training options."""
    owned = sorted({"cond_drop_prob", "grad_checkpointing"} & set(t.model_kwargs))
    if owned:
        raise DiTInputError(f"train_dit.model_kwargs must not set {owned}: use train_dit.{owned[0]}")
    return dit_config(t.size, **t.model_kwargs, cond_drop_prob=t.cond_drop_prob,
                      grad_checkpointing=t.grad_checkpointing)


def validate_dit_config(cfg: FacesynthConfig) -> dict[str, Any]:
    """Every check that must stop a run before any worker starts; returns what the driver needs."""
    t = cfg.train_dit
    for key in ("max_steps", "checkpoint_every", "log_every", "sample_identities", "sample_poses", "num_workers"):
        if getattr(t, key) < 1:
            raise DiTInputError(f"train_dit.{key} must be >= 1, got {getattr(t, key)}")
    if t.sample_every < 0 or t.id_weight < 0 or t.lr <= 0 or t.weight_decay < 0:
        raise DiTInputError("train_dit.sample_every, id_weight and weight_decay must be >= 0 and lr > 0")
    validate_sampling(cfg.train_dit.sample_steps, cfg.train_dit.sample_guidance, 0.0)  # the sample grid's settings
    model_cfg = dit_model_config(t)
    data_dir = layout.dit_dataset_dir(cfg)
    info = read_dataset_json(data_dir)
    protos = load_prototypes(layout.dit_prototypes_prefix(cfg))
    check_dit_inputs(model_cfg, protos, info, t.batch_size, t.num_workers)
    if t.id_weight > 0:
        # the architecture stage 1 trained; BackboneMismatchError for a checkpoint of another one
        backbone = load_backbone(layout.dit_backbone_prefix(cfg), expected_name=cfg.train_fr.backbone)
        check_fr_backbone(backbone, model_cfg.cond_dim, model_cfg.image_size)
    evaluator = layout.evaluator_prefix(cfg).resolve()
    if t.eval_every < 0 or t.eval_identities < 1:
        raise DiTInputError("train_dit.eval_every must be >= 0 and train_dit.eval_identities >= 1")
    if t.eval_every and not Path(str(evaluator) + ".safetensors").is_file():
        raise DiTInputError(f"train_dit.eval_every: the independent evaluator {evaluator}.safetensors is missing "
                            "(evaluate.evaluator; the default is made by `python -m ray_jobs train_evaluator`)")
    return {"data_dir": data_dir, "info": info, "model_config": model_cfg, "prototypes": protos,
            "evaluator": evaluator}


# ------------------------------------------------------------------------------------------------
# worker side


def _grid_png(ema_model: DiT, proto_rows: np.ndarray, landmarks: np.ndarray, labels: list[str],
              prototypes: torch.Tensor, cfg: FacesynthConfig, path: Path) -> Path:
    from evaluation.plots import image_grid

    tiles = grid_samples(ema_model, prototypes[torch.as_tensor(proto_rows)], landmarks, cfg.train_dit.sample_steps,
                         cfg.train_dit.sample_guidance, cfg.run.seed)
    image_grid(tiles, cfg.train_dit.sample_poses, path, labels=labels)
    return path


def _fidelity_probe(loop_config: dict, num_real: int, device: torch.device) -> FidelityProbe:
    """The independent evaluator with its class means of the real training images (rank 0, eval_every > 0)."""
    faces, labels = zip(*(read_shard_faces(p, loop_config["dataset_image_size"])
                          for p in list_shards(loop_config["dataset_dir"])))
    evaluator = load_evaluator(loop_config["evaluator"], None, True, device)
    return FidelityProbe(evaluator, np.concatenate(faces), np.concatenate(labels), num_real)


LEARNING_CURVE = {"real top-1": "fidelity/real/top1", "real own-class cosine": "fidelity/real/own_cos",
                  "virtual consistency / real": "fidelity/virtual/consistency_ratio",
                  "virtual separability / real": "fidelity/virtual/separability_ratio"}


def _log_learning_curve(tracker, path: Path, num_real: int, name: str) -> None:
    """The probe's fidelity history (independent evaluator) over the steps as one figure in the run."""
    series = {label: tracker.history(key) for label, key in LEARNING_CURVE.items()}
    if not any(series.values()):
        return
    plot_curves(series, path, references={"chance top-1": 1.0 / num_real, "0.8x of real": 0.8},
                title=f"{name}: DiT learning curve (independent evaluator, fixed probe)", ylabel="fidelity")
    tracker.artifact(path, "learning_curve")


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker: build the DiT parts, hand the step and its state to the skeleton."""
    wc = worker_context(loop_config, "train_dit")
    cfg, rank, world, device = wc.cfg, wc.rank, wc.world, wc.device
    t = cfg.train_dit

    model_cfg = DiTConfig.from_dict(loop_config["model_config"])
    dataset = DiTShardDataset(loop_config["dataset_dir"], image_size=loop_config["dataset_image_size"],
                              model_image_size=model_cfg.image_size)
    order = GlobalBatchOrder(len(dataset), t.batch_size, world, rank, cfg.run.seed)
    protos = load_prototypes(loop_config["prototypes"])
    cond = condition_prototypes(protos.weight).to(device)
    model = DiT(model_cfg).to(device)
    ema = EMA(model, t.ema_decay, warmup=t.ema_warmup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    id_fn = None
    if t.id_weight > 0:
        id_fn = frozen(load_backbone(loop_config["backbone"], expected_name=cfg.train_fr.backbone)).to(device)
    amp_dtype = autocast_dtype(device, t.bf16, t.cpu_bf16)
    guard = NonFiniteGuard(t.max_nonfinite)
    modules: dict[str, Any] = {"model": model}
    grid = grid_conditions(protos.num_real, protos.num_virtual, t.sample_identities, dataset.landmarks,
                           t.sample_poses) if rank == 0 else None
    probe = _fidelity_probe(loop_config, protos.num_real, device) if rank == 0 and t.eval_every else None
    probe_at = probe_rows(protos.num_real, protos.num_virtual, t.eval_identities, 2)

    def load(d: Path) -> dict:
        return load_dit_checkpoint(d, model, ema, optimizer, device)

    def start(state: dict) -> None:  # after the resume: DDP-wrap, restore the non-finite count
        modules["model"] = ray.train.torch.prepare_model(model) if world > 1 else model
        guard.total = state.get("nonfinite_total", 0)

    def save(d: Path, state: dict, write: bool) -> None:
        if write:
            save_dit_checkpoint(d, modules["model"], ema, optimizer, state)

    def step(i: int, batch) -> dict:
        images, labels, landmarks = batch
        return dit_train_step(modules["model"], ema, optimizer, images.to(device, non_blocking=True),
                              cond[labels.to(device)], landmarks, step_generator(cfg.run.seed, i, rank), guard, i,
                              id_fn, t.id_weight, t.cond_drop_prob, amp_dtype)

    def periodic(i: int, last: bool) -> None:
        if probe is not None and (i % t.eval_every == 0 or last):  # the learning curve, independent evaluator
            faces = sample_rows(ema.module, cond, probe_at, dataset.landmarks, t.sample_steps, t.sample_guidance)
            wc.logger.metrics(flat_fidelity(probe.measure(faces, probe_at)), step=i)
        if (t.sample_every and i % t.sample_every == 0) or last:
            with tempfile.TemporaryDirectory() as tmp:
                wc.logger.artifact(_grid_png(ema.module, grid[0], grid[1], grid[2], cond, cfg,
                                             Path(tmp) / f"samples_step{i:08d}.png"), "samples")

    parts = TrainerParts(
        total_steps=t.max_steps, steps_per_epoch=order.steps_per_epoch,
        epoch_batches=lambda epoch, start_: torch.utils.data.DataLoader(
            dataset, batch_sampler=list(order.epoch_batches(epoch, start_)), num_workers=t.loader_workers),
        step=step, batch_images=lambda batch: batch[0].shape[0], save=save, load=load,
        nonfinite_total=lambda: guard.total,
        state_fields=lambda i: {"batch_size": t.batch_size, "epoch": i // order.steps_per_epoch,
                                "batch_in_epoch": i % order.steps_per_epoch},
        on_resume=lambda state: {"model_sha1": weights_sha1(model)}, start=start, periodic=periodic,
        dataset_fingerprint=content_fingerprint(loop_config["dataset_dir"]))
    run_worker_loop(wc, parts, t, Path(loop_config["export_dir"]), "train_dit")


# ------------------------------------------------------------------------------------------------
# driver side


def run_train_dit(cfg: FacesynthConfig) -> dict[str, Any]:
    t = cfg.train_dit
    checked = validate_dit_config(cfg)
    info = checked["info"]
    init_ray(cfg.ray)
    export_dir = layout.dit_export_dir(cfg).resolve()
    clear_stopped(export_dir)
    with mlflow_run(cfg, "train_dit", resume=True) as tracker:
        model_cfg: DiTConfig = checked["model_config"]
        tracker.metrics({"num_classes": info.num_classes, "num_images": info.num_images,
                         "num_virtual": checked["prototypes"].num_virtual,
                         "dit_params_m": sum(p.numel() for p in DiT(model_cfg).parameters()) / 1e6})
        loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": absolute_uri(tracking_uri(cfg)),
                       "dataset_dir": str(checked["data_dir"].resolve()), "model_config": model_cfg.to_dict(),
                       "dataset_image_size": checked["info"].image_size,
                       "prototypes": str(layout.dit_prototypes_prefix(cfg).resolve()),
                       "backbone": str(layout.dit_backbone_prefix(cfg).resolve()), "export_dir": str(export_dir),
                       "evaluator": str(checked["evaluator"])}
        trainer = make_torch_trainer(train_loop, loop_config, name=f"{cfg.run.name}-train_dit",
                                     storage=layout.ray_storage(cfg),
                                     num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     cpus_per_worker=t.cpus_per_worker, max_failures=t.max_failures,
                                     keep_checkpoints=t.keep_checkpoints)
        result, seconds = fit_checked(trainer, export_dir, "train_dit", t.max_nonfinite, tracker)
        with result.checkpoint.as_directory() as d:
            export_ema(d, export_dir)
            final_state = json.loads((Path(d) / STATE_FILE).read_text())
        summary = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        tracker.metrics({"train_seconds": seconds})
        if t.eval_every:  # (no MLflow run: no history, nothing drawn)
            _log_learning_curve(tracker, export_dir / "learning_curve.png", info.num_classes, cfg.run.name)
        (export_dir / "metrics.json").write_text(json.dumps({"final": summary, "state": final_state}, indent=1))
        for name in ("config.json", "metrics.json"):
            tracker.artifact(export_dir / name, "dit_model")
        log.info("train_dit: done in %.1f s; exported the EMA DiT to %s", seconds, export_dir)
        return {"metrics": summary, "export_dir": export_dir, "state": final_state}
