"""``train_auggen``: AugGen's class-conditional EDM2 generator on D_orig only, on Ray Train (DDP).

The driver checks the dataset and the model size before Ray starts, opens one MLflow run and a
``TorchTrainer``; each worker builds the plain-torch parts from ``generation.edm2_*`` and hands them to
the worker-loop skeleton (resume, checkpoints, non-finite stop, rank-0 logging). Rank 0 also writes the
power-EMA snapshots (``<export>/ema_snapshots``) and a sample grid of fixed classes. The driver exports
the EMA of ``auggen.train.export_std`` to ``<run.output_dir>/auggen/<run.name>/``.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from fr.data.shards import check_labels, content_fingerprint, read_dataset_json
from fr.prototypes import PrototypeFileError, load_prototypes
from fr.training import GlobalBatchOrder, NonFiniteGuard, autocast_dtype
from generation.edm2_checkpoint import export_from_checkpoint, load_edm2_checkpoint, save_edm2_checkpoint
from generation.edm2_data import EDM2FaceData
from generation.edm2_ema import PowerEMA, std_to_gamma
from generation.edm2_loss import EDM2LossConfig, edm2_train_step, learning_rate, make_optimizer, one_hot
from generation.edm2_label_basis import LabelBasisError, label_basis_from_prototypes
from generation.edm2_sampler import sample_edm2, validate_edm_sampling
from generation.edm2_unet import EDM2Config, EDM2Denoiser, edm2_config, set_label_basis
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import ConfigError, FacesynthConfig, to_dict
from ray_jobs.tracking import mlflow_run, tracking_uri
from ray_jobs.train_common import (TrainerParts, absolute_uri, clear_stopped, make_torch_trainer, raise_if_stopped,
                                   run_worker_loop, worker_context)

log = logging.getLogger(__name__)
SNAPSHOT_DIR = "ema_snapshots"


def auggen_dataset_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.auggen.train.dataset) if cfg.auggen.train.dataset else layout.real_dataset_dir(cfg)


def label_basis_prefix(cfg: FacesynthConfig) -> Path | None:
    """The prototypes behind ``auggen.train.label_basis``: None (one-hot), this run's train_fr export ("stage1")
    or the given prefix."""
    basis = cfg.auggen.train.label_basis
    if not basis:
        return None
    return layout.fr_export_dir(cfg) / "prototypes" if basis == "stage1" else Path(basis)


def validate_train_auggen(cfg: FacesynthConfig) -> dict[str, Any]:
    """Every check that must stop the run before a worker starts; returns what the driver needs."""
    t = cfg.auggen.train
    for key in ("batch_size", "max_steps", "log_every", "checkpoint_every", "num_workers", "sample_classes",
                "sample_per_class", "max_nonfinite"):
        if getattr(t, key) < 1:
            raise ConfigError(f"auggen.train.{key} must be >= 1, got {getattr(t, key)}")
    if t.ref_lr <= 0 or not 0 <= t.label_dropout < 1 or t.p_std <= 0:
        raise ConfigError("auggen.train: need ref_lr > 0, 0 <= label_dropout < 1, p_std > 0")
    if t.batch_size % t.num_workers:
        raise ConfigError(f"auggen.train.batch_size {t.batch_size} does not divide over {t.num_workers} workers")
    for std in [*t.ema_stds, t.export_std]:
        std_to_gamma(std)  # ValueError naming the std
    if t.export_std not in t.ema_stds and t.snapshot_every < 1:
        raise ConfigError(f"auggen.train.export_std {t.export_std} is not one of ema_stds {t.ema_stds}: "
                          f"its post-hoc reconstruction needs snapshots (auggen.train.snapshot_every >= 1)")
    validate_edm_sampling(t.sample_steps, t.sample_guidance, 0.002, 80.0, 7.0)
    data_dir = auggen_dataset_dir(cfg)
    info = read_dataset_json(data_dir)
    check_labels(data_dir, info.num_classes)
    if info.num_images < t.batch_size:
        raise ConfigError(f"auggen.train.batch_size {t.batch_size} exceeds the {info.num_images} images of {data_dir}")
    basis_prefix, basis_kwargs = label_basis_prefix(cfg), {}
    if basis_prefix is not None:
        try:
            basis = label_basis_from_prototypes(load_prototypes(basis_prefix), info.identities,
                                                f"auggen.train.label_basis {basis_prefix}")
        except (PrototypeFileError, LabelBasisError) as exc:
            raise ConfigError(str(exc)) from exc
        basis_kwargs = {"label_basis_dim": int(basis.shape[1])}
    try:
        model_cfg = edm2_config(t.size, info.num_classes, **{**t.model_kwargs, **basis_kwargs})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"auggen.train.size/model_kwargs: {exc}") from exc
    return {"data_dir": data_dir, "info": info, "model_config": model_cfg, "label_basis": basis_prefix}


def grid_classes(num_classes: int, n: int) -> list[int]:
    """``n`` fixed classes spread over the label range (the same in every grid of a run)."""
    return sorted({int(round(v)) for v in np.linspace(0, num_classes - 1, min(n, num_classes))})


# ------------------------------------------------------------------------------------------------
# worker side


def train_loop(loop_config: dict) -> None:
    wc = worker_context(loop_config, "auggen")  # GPU if auggen.train.use_gpu (AugGenSection.use_gpu)
    cfg, rank, world, device = wc.cfg, wc.rank, wc.world, wc.device
    t = cfg.auggen.train
    model_cfg = EDM2Config.from_dict(loop_config["model_config"])
    data = EDM2FaceData(loop_config["dataset_dir"], loop_config["image_size"], model_cfg.image_size, t.hflip,
                        cfg.run.seed)
    order = GlobalBatchOrder(len(data), t.batch_size, world, rank, cfg.run.seed)
    model = EDM2Denoiser(model_cfg)
    if loop_config.get("label_basis"):  # before the EMA copies the model (a resume loads the same buffer)
        set_label_basis(model, label_basis_from_prototypes(load_prototypes(loop_config["label_basis"]),
                                                           read_dataset_json(loop_config["dataset_dir"]).identities))
    model = model.to(device)
    ema = PowerEMA(model, tuple(t.ema_stds))
    optimizer = make_optimizer(model, t.ref_lr)
    loss_cfg = EDM2LossConfig(t.p_mean, t.p_std, model_cfg.sigma_data, t.label_dropout)
    amp = autocast_dtype(device, t.bf16, t.cpu_bf16)
    guard = NonFiniteGuard(t.max_nonfinite)
    export_dir = Path(loop_config["export_dir"])
    modules: dict[str, Any] = {"model": model}
    classes = grid_classes(model_cfg.num_classes, t.sample_classes)

    def load(d: Path) -> dict:
        state = load_edm2_checkpoint(d, model, ema, optimizer, device)
        if state.get("global_batch") != t.batch_size or state.get("num_images") != len(data):
            raise ConfigError(f"run {cfg.run.name!r} was checkpointed with batch {state.get('global_batch')} on "
                              f"{state.get('num_images')} images, now {t.batch_size} on {len(data)}: use another run.name")
        return state

    def start(state: dict) -> None:
        guard.total = state.get("nonfinite_total", 0)
        modules["model"] = ray.train.torch.prepare_model(model) if world > 1 else model

    def epoch_batches(epoch: int, start_step: int):
        data.set_epoch(epoch)
        return torch.utils.data.DataLoader(data, batch_sampler=list(order.epoch_batches(epoch, start_step)),
                                           num_workers=t.loader_workers)

    def step(step_index: int, batch) -> dict:
        images, labels = batch[0].to(device), batch[1].to(device)
        seed = int(np.random.SeedSequence([cfg.run.seed, step_index, rank]).generate_state(1, np.uint64)[0]) % 2 ** 63
        gen = torch.Generator().manual_seed(seed)  # noise and sigma of this step: the same after a resume
        lr = learning_rate(step_index, t.ref_lr, t.ref_steps, t.rampup_steps)
        out = edm2_train_step(modules["model"], optimizer, images, one_hot(labels, model_cfg.num_classes), loss_cfg,
                              gen, guard, step_index, lr, amp, t.max_grad_norm)
        if not out["skipped"]:
            ema.update(model)
        return out

    def save(d: Path, state: dict, write: bool) -> None:
        if write:
            save_edm2_checkpoint(d, model, ema, optimizer, state)

    def periodic(step_index: int, last: bool) -> dict | None:
        if t.snapshot_every and (step_index % t.snapshot_every == 0 or last):
            ema.write_snapshots(export_dir / SNAPSHOT_DIR, step_index)
        if not ((t.sample_every and step_index % t.sample_every == 0) or last):
            return None
        from evaluation.plots import image_grid

        eye = torch.eye(model_cfg.num_classes, device=device)
        rows = [c for c in classes for _ in range(t.sample_per_class)]
        seeds = [cfg.run.seed * 1000 + k for c in classes for k in range(t.sample_per_class)]
        faces = sample_edm2(ema.module_for(t.ema_stds[-1]), eye[rows], seeds, t.sample_steps, t.sample_guidance,
                            amp_dtype=amp)
        labels = [str(c) if k == 0 else "" for c in classes for k in range(t.sample_per_class)]
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"samples_step{step_index:08d}.png"
            image_grid(list(faces), t.sample_per_class, png, labels=labels)
            wc.logger.artifact(png, "samples")
            if last:
                export_dir.mkdir(parents=True, exist_ok=True)
                image_grid(list(faces), t.sample_per_class, export_dir / "samples_final.png")
        return None

    parts = TrainerParts(
        total_steps=t.max_steps, steps_per_epoch=order.steps_per_epoch, epoch_batches=epoch_batches, step=step,
        batch_images=lambda batch: batch[0].shape[0], save=save, load=load, nonfinite_total=lambda: guard.total,
        state_fields=lambda s: {"global_batch": t.batch_size, "num_images": len(data),
                                "skipped_records": data.num_skipped},
        start=start, periodic=periodic if rank == 0 else None,
        dataset_fingerprint=content_fingerprint(loop_config["dataset_dir"]))
    run_worker_loop(wc, parts, t, export_dir, "train_auggen")


# ------------------------------------------------------------------------------------------------
# driver side


def run_train_auggen(cfg: FacesynthConfig) -> dict[str, Any]:
    t = cfg.auggen.train
    checked = validate_train_auggen(cfg)
    info, model_cfg = checked["info"], checked["model_config"]
    init_ray(cfg.ray)
    export_dir = layout.model_dir(cfg, "auggen").resolve()
    clear_stopped(export_dir)
    with mlflow_run(cfg, "train_auggen", resume=True) as tracker:
        tracker.metrics({"num_classes": info.num_classes, "num_images": info.num_images,
                         "edm2_params_m": sum(p.numel() for p in EDM2Denoiser(model_cfg).parameters()) / 1e6})
        loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": absolute_uri(tracking_uri(cfg)),
                       "dataset_dir": str(checked["data_dir"].resolve()), "image_size": info.image_size,
                       "model_config": model_cfg.to_dict(), "export_dir": str(export_dir),
                       "label_basis": str(checked["label_basis"].resolve()) if checked["label_basis"] else ""}
        trainer = make_torch_trainer(train_loop, loop_config, name=f"{cfg.run.name}-train_auggen",
                                     storage=layout.ray_storage(cfg), num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     cpus_per_worker=t.cpus_per_worker, max_failures=t.max_failures,
                                     keep_checkpoints=t.keep_checkpoints)
        t0 = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - t0
        raise_if_stopped(export_dir, result, "train_auggen", t.max_nonfinite, tracker)
        if result.checkpoint is None:
            raise RuntimeError(f"train_auggen finished without a checkpoint: {result.error}")
        provenance = {"trained_on": str(checked["data_dir"].resolve()), "identities": info.identities,
                      "run": cfg.run.name, "seed": cfg.run.seed}
        with result.checkpoint.as_directory() as d:
            how = export_from_checkpoint(d, export_dir / SNAPSHOT_DIR, export_dir, t.export_std, provenance)
            final_state = json.loads((Path(d) / "state.json").read_text())
        summary = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        tracker.metrics({"train_seconds": seconds})
        (export_dir / "metrics.json").write_text(json.dumps({"final": summary, "export": how, "state": final_state,
                                                             "train_seconds": seconds}, indent=1))
        for name in ("config.json", "metrics.json", "samples_final.png"):
            if (export_dir / name).is_file():
                tracker.artifact(export_dir / name, "auggen_model")
        log.info("train_auggen: done in %.1f s; exported the EMA (std %s, %s) to %s", seconds, t.export_std,
                 how["from"], export_dir)
        return {"metrics": summary, "export_dir": export_dir, "export": how}
