"""``train_fr``: FR training (VIGFace stage 1 and the FR trainer every method reuses) on Ray Train.

The driver resolves the dataset, starts one MLflow run and a ``TorchTrainer``; each worker builds the
plain-PyTorch parts from the config (backbone under DDP, the classifier head named by ``train_fr.head``
from ``fr.head_registry``, the ``fr.train_step.FRTrainStep``) and hands them to the worker-loop
skeleton (``ray_jobs.train_common.run_worker_loop``: resume, checkpoints, non-finite stop, logging).
Checkpoints are independent of the world size; rerunning the same ``run.name`` resumes from the latest
one, and ``FailureConfig`` restarts failed workers from it. At the end the driver exports the backbone
and the head's files (the prototype matrix for the margin heads) to ``<run.output_dir>/fr/<run.name>/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from evaluation.backbone_verification import evaluate_backbone, verification_sets
from fr.augment import AugmentConfig, FaceAugment
from fr.data.face_dataset import FaceShardDataset
from fr.data.shards import check_labels, content_fingerprint, read_dataset_json
from fr.fr_model import FRNet, build_fr_net, export_fr_model, load_fr_checkpoint, save_fr_checkpoint
from fr.head_registry import HeadSpec, build_head
from fr.heads import ClassifierHead
from fr.margins import build_margin
from fr.train_step import FRTrainStep
from fr.training import GlobalBatchOrder, LRSchedule
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, TrainFRSection, to_dict
from ray_jobs.errors import InputError
from ray_jobs.tracking import mlflow_run, tracking_uri
from ray_jobs.train_common import (TrainerParts, absolute_uri, clear_stopped, fit_checked, make_torch_trainer,
                                   run_worker_loop, worker_context)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# config -> objects, validation (driver and workers)


def validate_fr_config(t: TrainFRSection, num_images: int) -> None:
    """Errors that must stop a run before any worker starts."""
    if t.num_workers < 1:
        raise InputError(f"train_fr.num_workers must be >= 1, got {t.num_workers}")
    if t.batch_size % t.num_workers:
        raise InputError(f"train_fr.batch_size {t.batch_size} does not divide across {t.num_workers} workers")
    if num_images < t.batch_size:
        raise InputError(f"the dataset has {num_images} images, fewer than train_fr.batch_size {t.batch_size}")
    if t.lr_schedule not in ("step", "poly"):
        raise InputError(f"train_fr.lr_schedule must be step or poly, got {t.lr_schedule!r}")
    if t.checkpoint_every < 1:
        raise InputError(f"train_fr.checkpoint_every must be >= 1, got {t.checkpoint_every}")


def head_spec(cfg: FacesynthConfig, num_classes: int, identities: list[str], world: int) -> HeadSpec:
    t = cfg.train_fr
    options = dict(t.head_kwargs)
    if t.codes:
        options["codes"] = str(Path(t.codes).resolve())  # workers run in another directory
    return HeadSpec(num_classes=num_classes, embedding_size=t.embedding_size,
                    margin=build_margin(t.margin, scale=t.margin_scale, margin=t.margin_m),
                    num_virtual=t.num_virtual, sample_rate=t.sample_rate, seed=cfg.run.seed, world_size=world,
                    identities=identities, options=options)


def build_fr_parts(cfg: FacesynthConfig, num_classes: int, identities: list[str], world: int
                   ) -> tuple[FRNet, ClassifierHead]:
    t = cfg.train_fr
    net = build_fr_net(t.backbone, t.embedding_size, t.crfiqa, t.backbone_kwargs, t.crfiqa_backbone_grad)
    return net, build_head(t.head, head_spec(cfg, num_classes, identities, world))


# ------------------------------------------------------------------------------------------------
# worker side


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker: build the FR parts, hand the step and its state to the skeleton."""
    wc = worker_context(loop_config, "train_fr")
    cfg, rank, world, device = wc.cfg, wc.rank, wc.world, wc.device
    t = cfg.train_fr

    augment = FaceAugment(AugmentConfig(erase_prob=t.augment_prob, rescale_prob=t.augment_prob,
                                        jitter_prob=t.augment_prob)) if t.augment else None
    dataset = FaceShardDataset(loop_config["dataset_dir"], augment=augment, seed=cfg.run.seed)
    order = GlobalBatchOrder(len(dataset), t.batch_size, world, rank, cfg.run.seed)
    total_steps = t.max_steps or t.epochs * order.steps_per_epoch
    schedule = LRSchedule(t.lr, t.lr_schedule, order.steps_per_epoch, total_steps, tuple(t.lr_milestones),
                          int(t.warmup_epochs * order.steps_per_epoch))
    net, head = build_fr_parts(cfg, loop_config["num_classes"], loop_config["identities"], world)
    head = head.to(device)
    net_opt = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    head_opt = torch.optim.SGD(head.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    modules: dict[str, Any] = {"net": net}  # the DDP wrapper replaces the net after loading

    def load(d: Path) -> dict:
        state = load_fr_checkpoint(d, net, head, net_opt, head_opt, device)
        if state.get("global_batch", t.batch_size) != t.batch_size or state.get("num_images", len(dataset)) != len(dataset):
            raise ValueError(
                f"run {cfg.run.name!r} was checkpointed with batch {state.get('global_batch')} on "
                f"{state.get('num_images')} images; now batch {t.batch_size} on {len(dataset)}: the data position "
                f"would not match. Use another run.name, or the same batch size and dataset.")
        return state

    def on_resume(state: dict) -> dict:
        full_head = head.full_state_dict()  # collective for a sharded head
        weight = full_head.get("weight", next(iter(full_head.values())))
        return {"head_weight_sha1": hashlib.sha1(weight.detach().cpu().float().numpy().tobytes()).hexdigest()}

    def epoch_batches(epoch: int, start: int):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=list(order.epoch_batches(epoch, start)),
                                             num_workers=t.loader_workers)
        dataset.set_epoch(epoch)
        return loader

    sets = verification_sets(loop_config["verify_bins"]) if rank == 0 else {}

    def periodic(step: int, last: bool) -> dict | None:
        if not sets or not ((t.eval_every and step % t.eval_every == 0) or last):
            return None
        wrapped = modules["net"]
        with tempfile.TemporaryDirectory() as plots:
            ev = evaluate_backbone(wrapped.module.backbone if hasattr(wrapped, "module") else wrapped.backbone, sets,
                                   device, plot_dir=Path(plots) if last else None)
            log.info("step %d verification: %s", step,
                     " ".join(f"{k}={v:.4f}" for k, v in ev.items() if k.endswith("accuracy")))
            for png in sorted(Path(plots).glob("*.png")):
                wc.logger.artifact(png, "verification")
        return ev

    def save(d: Path, state: dict, write: bool) -> None:
        save_fr_checkpoint(d, modules["net"], head, net_opt, head_opt, state, write=write)

    steps: dict[str, FRTrainStep] = {}

    def start(state: dict) -> None:  # after the resume: DDP-wrap the restored net, build the step
        modules["net"] = ray.train.torch.prepare_model(net) if world > 1 else net.to(device)
        steps["fr"] = FRTrainStep(modules["net"], head, net_opt, head_opt, device=device, crfiqa_weight=t.crfiqa_weight,
                                  grad_clip=t.grad_clip, amp=t.amp, max_nonfinite=t.max_nonfinite,
                                  nonfinite_total=state.get("nonfinite_total", 0), cpu_bf16=t.cpu_bf16)

    parts = TrainerParts(
        total_steps=total_steps, steps_per_epoch=order.steps_per_epoch, epoch_batches=epoch_batches,
        step=lambda step, batch: steps["fr"](batch[0], batch[1], schedule(step), step),
        batch_images=lambda batch: batch[0].shape[0], save=save, load=load,
        nonfinite_total=lambda: steps["fr"].guard.total,
        state_fields=lambda step: {"total_steps": total_steps, "global_batch": t.batch_size, "num_images": len(dataset)},
        on_resume=on_resume, start=start, periodic=periodic,
        dataset_fingerprint=content_fingerprint(loop_config["dataset_dir"]))
    run_worker_loop(wc, parts, t, Path(loop_config["export_dir"]), "train_fr")


# ------------------------------------------------------------------------------------------------
# driver side


def run_train_fr(cfg: FacesynthConfig) -> dict[str, Any]:
    t = cfg.train_fr
    data_dir = layout.real_dataset_dir(cfg)
    info = read_dataset_json(data_dir)
    validate_fr_config(t, info.num_images)
    check_labels(data_dir, info.num_classes)
    bins = layout.verify_bins(cfg)
    build_head(t.head, head_spec(cfg, info.num_classes, info.identities, t.num_workers))  # bad head options fail here
    init_ray(cfg.ray)
    export_dir = layout.fr_export_dir(cfg).resolve()
    clear_stopped(export_dir)
    with mlflow_run(cfg, "train_fr", resume=True) as tracker:
        tracker.metrics({"num_classes": info.num_classes, "num_images": info.num_images})
        loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": absolute_uri(tracking_uri(cfg)),
                       "dataset_dir": str(data_dir.resolve()), "num_classes": info.num_classes,
                       "identities": info.identities, "verify_bins": [str(b.resolve()) for b in bins],
                       "export_dir": str(export_dir)}
        trainer = make_torch_trainer(train_loop, loop_config, name=f"{cfg.run.name}-train_fr",
                                     storage=layout.ray_storage(cfg), num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     cpus_per_worker=t.cpus_per_worker, max_failures=t.max_failures,
                                     keep_checkpoints=t.keep_checkpoints)
        result, seconds = fit_checked(trainer, export_dir, "train_fr", t.max_nonfinite, tracker)
        net, head = build_fr_parts(cfg, info.num_classes, info.identities, 1)
        with result.checkpoint.as_directory() as d:
            paths, _ = export_fr_model(d, net, head, info.identities, export_dir, {"run": cfg.run.name})
            final_state = json.loads((Path(d) / "state.json").read_text())
        summary = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        tracker.metrics({"train_seconds": seconds})
        if "prototypes" in paths:
            from evaluation.dataset_plots import plot_prototype_similarity
            from evaluation.prototype_stats import prototype_cosine_stats
            from fr.prototypes import load_prototypes

            protos = load_prototypes(export_dir / "prototypes")
            proto_stats = {f"prototypes/{k}": v for k, v in prototype_cosine_stats(protos.weight, protos.num_real).items()}
            summary.update(proto_stats)
            tracker.metrics(proto_stats)
            if t.num_virtual > 0:
                paths["prototype_plot"] = export_dir / "prototype_similarity.png"
                plot_prototype_similarity(protos.weight, protos.num_real, paths["prototype_plot"])
                tracker.artifact(paths["prototype_plot"], "fr_model")
        (export_dir / "metrics.json").write_text(json.dumps({"final": summary, "state": final_state}, indent=1))
        for name in ("backbone.json", "prototypes.json", "metrics.json"):
            if (export_dir / name).is_file():
                tracker.artifact(export_dir / name, "fr_model")
        log.info("train_fr: done in %.1f s; exported %s", seconds, {k: str(v) for k, v in paths.items()})
        return {"metrics": summary, "paths": paths, "state": final_state, "seconds": seconds}
