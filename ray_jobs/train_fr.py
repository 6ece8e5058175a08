"""``train_fr``: FR training (VIGFace stage 1 and the FR trainer every method reuses) on Ray Train.

The driver resolves the dataset, starts one MLflow run and a ``TorchTrainer``; each worker runs
:func:`train_loop` (plain PyTorch from ``fr``: backbone under DDP, sharded margin head with virtual
prototypes, optional CR-FIQA head). Checkpoints every ``checkpoint_every`` steps are independent of the
world size; rerunning the same ``run.name`` resumes from the latest one, and ``FailureConfig`` restarts
failed workers from it. At the end the driver exports the backbone and the prototype matrix
(safetensors + JSON) to ``<run.output_dir>/fr/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from fr.augment import AugmentConfig, FaceAugment
from fr.crfiqa import certainty_ratio, quality_loss
from fr.data.face_dataset import FaceShardDataset
from fr.fr_model import build_fr_net, load_fr_checkpoint, save_fr_checkpoint
from fr.margins import build_margin
from fr.partial_fc import PartialFCHead
from fr.data.shards import check_labels, read_dataset_json
from fr.training import GlobalBatchOrder, LRSchedule, NonFiniteGuard, NonFiniteLossError, clip_and_step, set_lr
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, TrainFRSection, to_dict
from ray_jobs.tracking import mlflow_run, tracking_uri
from ray_jobs.train_common import absolute_uri, make_torch_trainer, worker_context

log = logging.getLogger(__name__)
STOPPED_FILE = "stopped_nonfinite.json"


# ------------------------------------------------------------------------------------------------
# paths and validation (driver)


def fr_dataset_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.train_fr.dataset or Path(cfg.run.output_dir) / "data" / cfg.prepare.dataset_name / "train")


def fr_verify_bins(cfg: FacesynthConfig) -> list[Path]:
    if cfg.train_fr.verify_bins:
        bins = [Path(p) for p in cfg.train_fr.verify_bins]
    else:
        bins = sorted((fr_dataset_dir(cfg).parent / "verify").glob("*.bin"))
    missing = [str(p) for p in bins if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"train_fr.verify_bins: not found: {missing}")
    return bins


def fr_export_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.run.output_dir) / "fr" / cfg.run.name


def validate_fr_config(t: TrainFRSection, num_images: int) -> None:
    """Errors that must stop a run before any worker starts."""
    if t.num_workers < 1:
        raise ValueError(f"train_fr.num_workers must be >= 1, got {t.num_workers}")
    if t.batch_size % t.num_workers:
        raise ValueError(f"train_fr.batch_size {t.batch_size} does not divide across {t.num_workers} workers")
    if num_images < t.batch_size:
        raise ValueError(f"the dataset has {num_images} images, fewer than train_fr.batch_size {t.batch_size}")
    if t.lr_schedule not in ("step", "poly"):
        raise ValueError(f"train_fr.lr_schedule must be step or poly, got {t.lr_schedule!r}")
    if t.checkpoint_every < 1:
        raise ValueError(f"train_fr.checkpoint_every must be >= 1, got {t.checkpoint_every}")


# ------------------------------------------------------------------------------------------------
# worker side


def verification_sets(paths: list[str]) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    from fr.data.binfile import load_bin
    from fr.data.images import decode_image

    out = {}
    for p in paths:
        images, issame = load_bin(p)
        out[Path(p).stem] = ([decode_image(b) for b in images], issame)
    return out


def evaluate_backbone(backbone: torch.nn.Module, sets: dict, device: torch.device, batch_size: int = 128,
                      plot_dir: Path | None = None) -> dict[str, Any]:
    """10-fold verification (flip test) on every set; returns metrics (and ROC/histogram PNGs)."""
    from evaluation.plots import plot_roc, plot_similarity_histogram
    from evaluation.verification import embed_images, evaluate_similarities, pair_similarities

    was_training = backbone.training
    backbone.eval()

    def embed_fn(x: torch.Tensor) -> torch.Tensor:
        return backbone(x.to(device)).float().cpu()

    metrics, curves = {}, {}
    for name, (images, issame) in sets.items():
        sims = pair_similarities(embed_images(embed_fn, images, batch_size=batch_size, flip=True))  # embed once
        result = evaluate_similarities(sims, issame)
        metrics.update(result.to_metrics(f"verify/{name}/"))
        curves[name] = (result.fpr, result.tpr, result.auc)
        if plot_dir is not None:
            plot_similarity_histogram(sims, issame, plot_dir / f"similarity_hist_{name}.png",
                                      title=f"{name}: genuine vs impostor cosine")
    if plot_dir is not None and curves:
        plot_roc(curves, plot_dir / "roc.png")
    backbone.train(was_training)
    return metrics


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker. All ranks run the same steps; collectives happen inside the head."""
    wc = worker_context(loop_config, "train_fr")
    cfg, rank, world, device, logger = wc.cfg, wc.rank, wc.world, wc.device, wc.logger
    t = cfg.train_fr

    augment = FaceAugment(AugmentConfig(erase_prob=t.augment_prob, rescale_prob=t.augment_prob,
                                        jitter_prob=t.augment_prob)) if t.augment else None
    dataset = FaceShardDataset(loop_config["dataset_dir"], augment=augment, seed=cfg.run.seed)
    order = GlobalBatchOrder(len(dataset), t.batch_size, world, rank, cfg.run.seed)
    total_steps = t.max_steps or t.epochs * order.steps_per_epoch
    schedule = LRSchedule(t.lr, t.lr_schedule, order.steps_per_epoch, total_steps, tuple(t.lr_milestones),
                          int(t.warmup_epochs * order.steps_per_epoch))

    net = build_fr_net(t.backbone, t.embedding_size, t.crfiqa, t.backbone_kwargs, t.crfiqa_backbone_grad)
    margin = build_margin(t.margin, scale=t.margin_scale, margin=t.margin_m)
    # embedding_grad_scale=world: DDP averages backbone gradients over ranks, the sharded loss is the
    # mean over the global batch, so scaling by the world size gives the true global-batch gradient.
    head = PartialFCHead(loop_config["num_classes"], t.num_virtual, t.embedding_size, margin,
                         sample_rate=t.sample_rate, seed=cfg.run.seed, embedding_grad_scale=float(world)).to(device)
    net_opt = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    head_opt = torch.optim.SGD(head.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    state = {"step": 0, "nonfinite_total": 0, "images_seen": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_fr_checkpoint(d, net, head, net_opt, head_opt, device)
        if state.get("global_batch", t.batch_size) != t.batch_size or state.get("num_images", len(dataset)) != len(dataset):
            raise ValueError(
                f"run {cfg.run.name!r} was checkpointed with batch {state.get('global_batch')} on "
                f"{state.get('num_images')} images; now batch {t.batch_size} on {len(dataset)}: the data position "
                f"would not match. Use another run.name, or the same batch size and dataset.")
        full_head = head.gather_rows(head.weight)  # collective
        state.setdefault("resumes", []).append({
            "step": state["step"], "saved_world_size": state.get("world_size"), "world_size": world,
            "head_weight_sha1": hashlib.sha1(full_head.detach().cpu().float().numpy().tobytes()).hexdigest()})
        log.info("rank %d: resumed from step %d (saved on %s workers, now %d)", rank, state["step"],
                 state.get("world_size"), world)
    net = ray.train.torch.prepare_model(net) if world > 1 else net.to(device)
    amp = t.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype == torch.float16 else None
    guard = NonFiniteGuard(t.max_nonfinite)
    guard.total = state.get("nonfinite_total", 0)
    sets = verification_sets(loop_config["verify_bins"]) if rank == 0 else {}
    backbone_params = [p for p in net.parameters()]
    step = state["step"]
    t_log, n_log = time.perf_counter(), 0
    metrics: dict[str, float] = {}

    def save(final: bool) -> None:
        state.update(step=step, nonfinite_total=guard.total, world_size=world, total_steps=total_steps,
                     global_batch=t.batch_size, num_images=len(dataset))
        with tempfile.TemporaryDirectory() as tmp:
            save_fr_checkpoint(tmp, net, head, net_opt, head_opt, dict(state), write=rank == 0)
            report = dict(metrics, step=step, final=float(final))
            if rank == 0:
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(report)

    while step < total_steps:
        epoch, start = divmod(step, order.steps_per_epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=list(order.epoch_batches(epoch, start)),
                                             num_workers=t.loader_workers)
        dataset.set_epoch(epoch)
        for images, labels in loader:
            if t.fail_at_step and step == t.fail_at_step and rank == 0:
                marker = Path(loop_config["export_dir"]) / f".failed_once_{step}"
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    raise RuntimeError(f"fault injection: worker fails at step {step} (train_fr.fail_at_step)")
            lr = schedule(step)
            set_lr([net_opt, head_opt], lr)
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                emb, quality_pred = net(images)
            out = head(emb.float(), labels)
            loss = out.loss
            q_loss = None
            if quality_pred is not None:
                q_loss = quality_loss(quality_pred, certainty_ratio(out.ccs, out.nnccs))
                loss = loss + t.crfiqa_weight * q_loss
            finite = torch.isfinite(loss.detach()).float()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together
            net_opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=True)
            try:
                usable = guard.check(bool(finite.item()), step)
            except NonFiniteLossError as exc:  # every rank agrees (all-reduced flag): stop cleanly, no retry
                log.error("rank %d: %s", rank, exc)
                if rank == 0:
                    Path(loop_config["export_dir"]).mkdir(parents=True, exist_ok=True)
                    (Path(loop_config["export_dir"]) / STOPPED_FILE).write_text(
                        json.dumps({"step": step, "nonfinite_total": guard.total, "message": str(exc)}))
                ray.train.report(dict(metrics, step=step, stopped_nonfinite=1.0))
                return
            if usable:
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                grad_norm = clip_and_step(backbone_params, [net_opt, head_opt], t.grad_clip, scaler)
            else:
                grad_norm = float("nan")
                log.warning("rank %d: non-finite loss at step %d skipped", rank, step)
            step += 1
            n_log += images.shape[0] * world
            state["images_seen"] = state.get("images_seen", 0) + images.shape[0] * world
            if step % t.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_log
                metrics = {"loss": float(out.loss.detach()), "lr": lr, "grad_norm": grad_norm,
                           "images_per_s": n_log / max(elapsed, 1e-9), "epoch": step / order.steps_per_epoch,
                           "nonfinite_total": guard.total, "virtual_per_step": out.num_virtual_samples}
                if q_loss is not None:
                    metrics["quality_loss"] = float(q_loss.detach())
                t_log, n_log = time.perf_counter(), 0
                if rank == 0:
                    log.info("step %d/%d %s", step, total_steps,
                             " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                    logger.metrics(metrics, step)
            last = step == total_steps
            if rank == 0 and sets and ((t.eval_every and step % t.eval_every == 0) or last):
                with tempfile.TemporaryDirectory() as plots:
                    ev = evaluate_backbone(net.module.backbone if hasattr(net, "module") else net.backbone, sets,
                                           device, plot_dir=Path(plots) if last else None)
                    metrics.update(ev)
                    logger.metrics(ev, step)
                    log.info("step %d verification: %s", step,
                             " ".join(f"{k}={v:.4f}" for k, v in ev.items() if k.endswith("accuracy")))
                    for png in sorted(Path(plots).glob("*.png")):
                        logger.artifact(png, "verification")
            if step % t.checkpoint_every == 0 or last:
                save(final=last)
            if last:
                break


# ------------------------------------------------------------------------------------------------
# driver side


def export_fr_result(checkpoint_dir: Path, cfg: FacesynthConfig, num_classes: int, identities: list[str],
                     out_dir: Path) -> dict[str, Path]:
    """Backbone and prototype matrix (real + virtual, with counts) as safetensors + JSON."""
    from fr.backbones import save_backbone
    from fr.prototypes import save_prototypes

    t = cfg.train_fr
    net = build_fr_net(t.backbone, t.embedding_size, t.crfiqa, t.backbone_kwargs, t.crfiqa_backbone_grad)
    margin = build_margin(t.margin, scale=t.margin_scale, margin=t.margin_m)
    head = PartialFCHead(num_classes, t.num_virtual, t.embedding_size, margin, seed=cfg.run.seed)
    state = load_fr_checkpoint(checkpoint_dir, net, head, None, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone_prefix = save_backbone(net.backbone, out_dir / "backbone")
    paths = {"backbone": backbone_prefix}
    if net.quality is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.quality.state_dict().items()}, str(out_dir / "quality.safetensors"))
        paths["quality"] = out_dir / "quality.safetensors"
    paths["prototypes"] = save_prototypes(out_dir / "prototypes", head.weight.detach(), num_classes, t.num_virtual,
                                          identities, {"step": state["step"], "run": cfg.run.name}, overwrite=True)
    if t.num_virtual > 0:
        from evaluation.dataset_plots import plot_prototype_similarity

        plot_prototype_similarity(head.weight.detach(), num_classes, out_dir / "prototype_similarity.png")
        paths["prototype_plot"] = out_dir / "prototype_similarity.png"
    return paths


def run_train_fr(cfg: FacesynthConfig) -> dict[str, Any]:
    t = cfg.train_fr
    data_dir = fr_dataset_dir(cfg)
    info = read_dataset_json(data_dir)
    validate_fr_config(t, info.num_images)
    check_labels(data_dir, info.num_classes)
    bins = fr_verify_bins(cfg)
    init_ray(cfg.ray)
    storage = Path(cfg.run.output_dir).resolve() / "ray_train"
    export_dir = fr_export_dir(cfg).resolve()
    (export_dir / STOPPED_FILE).unlink(missing_ok=True)  # a marker of an earlier stopped attempt
    with mlflow_run(cfg, "train_fr") as tracker:
        tracker.metrics({"num_classes": info.num_classes, "num_images": info.num_images})
        loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": absolute_uri(tracking_uri(cfg)),
                       "dataset_dir": str(data_dir.resolve()), "num_classes": info.num_classes,
                       "verify_bins": [str(b.resolve()) for b in bins], "export_dir": str(export_dir)}
        trainer = make_torch_trainer(train_loop, loop_config, name=f"{cfg.run.name}-train_fr", storage=storage,
                                     num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     cpus_per_worker=t.cpus_per_worker, max_failures=t.max_failures,
                                     keep_checkpoints=t.keep_checkpoints)
        t0 = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - t0
        stopped = export_dir / STOPPED_FILE
        if stopped.exists():
            info_stop = json.loads(stopped.read_text())
            last = result.checkpoint.path if result.checkpoint is not None else "none"
            tracker.tags({"stopped": "non-finite loss"})
            raise NonFiniteLossError(
                f"train_fr stopped at step {info_stop['step']}: {t.max_nonfinite} non-finite losses in a row "
                f"({info_stop['nonfinite_total']} in all). Last good checkpoint: {last}. "
                f"Lower train_fr.lr or check the data.")
        if result.checkpoint is None:
            raise RuntimeError(f"train_fr finished without a checkpoint: {result.error}")
        with result.checkpoint.as_directory() as d:
            paths = export_fr_result(Path(d), cfg, info.num_classes, info.identities, export_dir)
            final_state = json.loads((Path(d) / "state.json").read_text())
        summary = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        from evaluation.prototype_stats import prototype_cosine_stats
        from fr.prototypes import load_prototypes

        protos = load_prototypes(export_dir / "prototypes")
        proto_stats = prototype_cosine_stats(protos.weight, protos.num_real)
        summary.update({f"prototypes/{k}": v for k, v in proto_stats.items()})
        tracker.metrics({"train_seconds": seconds, **{f"prototypes/{k}": v for k, v in proto_stats.items()}})
        if "prototype_plot" in paths:
            tracker.artifact(paths["prototype_plot"], "fr_model")
        (export_dir / "metrics.json").write_text(json.dumps({"final": summary, "state": final_state}, indent=1))
        for name in ("backbone.json", "prototypes.json", "metrics.json"):
            tracker.artifact(export_dir / name, "fr_model")
        log.info("train_fr: done in %.1f s; exported %s", seconds, {k: str(v) for k, v in paths.items()})
        return {"metrics": summary, "paths": paths, "state": final_state}
