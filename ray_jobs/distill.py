"""``distill``: SynthDistill on Ray Train (students under DDP on any number of workers).

Every worker runs the generator and the teacher in its own process for step 2 (re-sampling), which
depends on the same batch's student output, which Ray Data cannot feed back. Step 1's fresh batches
(and static_2x's second) are made in the worker (``distill.step1_source=worker``) or by Ray Data actors
streaming into it (``ray_data``, ``ray_jobs.step1_stream``); both give the same latents at the same
step. The latent stream is a function
of (run.seed, step), so a resumed run continues with the same latents. The student never sees a real
image or an identity label: its only inputs are generated faces and teacher embeddings.
All method code is in ``distill/``; this module builds it from the config and wires it to Ray and MLflow.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from distill.build import build_latent_generator, generator_kind_of
from distill.checkpoint import STATE_FILE, STUDENT_FILE, load_kd_checkpoint, save_kd_checkpoint
from distill.kd_step import KDStep
from distill.latent_stream import LatentStream
from distill.resampling import check_mode
from distill.students import build_student, complexity, save_student
from distill.teachers import check_teacher_fits, load_teacher
from distill.verify import agreement_histogram_png, load_pairs, module_embed01, resample_grid, verify
from fr.training import LRSchedule, set_lr
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, to_dict
from ray_jobs.step1_stream import (SOURCES, check_stream_fits, dataset_config, epoch_source, latest_checkpoint_step,
                                   step1_datasets, worker_batches)
from ray_jobs.tracking import mlflow_run, tracking_uri
from ray_jobs.train_common import (TrainerParts, absolute_uri, clear_stopped, fit_checked, make_torch_trainer,
                                   run_worker_loop, worker_context)

log = logging.getLogger(__name__)
JOB = "distill"


def teacher_path(cfg: FacesynthConfig) -> Path:
    return Path(cfg.distill.teacher) if cfg.distill.teacher else layout.fr_backbone_prefix(cfg)


def generator_kwargs(cfg: FacesynthConfig) -> dict[str, Any]:
    """:func:`distill.build.build_latent_generator`'s arguments from the config (the worker's and the stream's)."""
    d = cfg.distill
    return {"spec": d.generator, "kind": d.generator_kind, "toy_w_scale": d.toy_w_scale,
            "toy_render_size": d.toy_render_size, "psi": d.stylegan2_psi, "noise_mode": d.stylegan2_noise_mode,
            "diffusion_steps": d.diffusion_steps, "diffusion_guidance": d.diffusion_guidance}


def _generator(cfg: FacesynthConfig, device: str = "cpu"):
    return build_latent_generator(**generator_kwargs(cfg), device=device)


def validate_distill_config(cfg: FacesynthConfig) -> dict[str, Any]:
    """Every check that can fail before a worker starts: mode, sizes, teacher vs student, generator, pairs."""
    d = cfg.distill
    check_mode(d.mode)
    problems = {f"distill.step1_source must be one of {'|'.join(SOURCES)}, got {d.step1_source!r}":
                    d.step1_source not in SOURCES,
                "distill.stream_actors must be >= 1": d.stream_actors < 1,
                "distill.worker_threads must be >= 0 (0: Ray's)": d.worker_threads < 0,
                "distill.c must be > 0": d.c <= 0, "distill.batch_size must be >= 1": d.batch_size < 1,
                "distill.iterations_per_epoch must be >= 1": d.iterations_per_epoch < 1,
                "distill.epochs must be >= 1": d.epochs < 1, "distill.lr must be > 0": d.lr <= 0,
                f"distill.batch_size {d.batch_size} must divide over distill.num_workers {d.num_workers}":
                    d.num_workers < 1 or d.batch_size % max(d.num_workers, 1) != 0}
    bad = [k for k, v in problems.items() if v]
    if bad:
        raise ValueError("; ".join(bad))
    generator_kind_of(d.generator, d.generator_kind)
    teacher = load_teacher(teacher_path(cfg), d.teacher_arch)
    check_teacher_fits(teacher, 112, d.embedding_size, where=f"distill.teacher ({teacher_path(cfg)})")
    bins = layout.verify_bins(cfg, d.verify_bins or None)
    return {"teacher": teacher, "bins": [str(Path(b).resolve()) for b in bins]}


def train_loop(loop_config: dict) -> None:
    wc = worker_context(loop_config, JOB)
    cfg, rank, world, device = wc.cfg, wc.rank, wc.world, wc.device
    d = cfg.distill
    if d.worker_threads > 0:
        torch.set_num_threads(d.worker_threads)
    gen = _generator(cfg, str(device))
    teacher = load_teacher(loop_config["teacher"], d.teacher_arch, device=device)
    student = build_student(d.student, d.embedding_size, d.student_input_size, d.student_checkpoint or None).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=d.lr)
    total = d.epochs * d.iterations_per_epoch
    schedule = LRSchedule(d.lr, "step", d.iterations_per_epoch, total, gamma=d.lr_gamma,
                          milestones=tuple(float(e) for e in range(d.lr_step_epochs, d.epochs + 1, d.lr_step_epochs)))
    kd = KDStep(student, teacher, gen, optimizer, d.mode, d.c, device, d.max_nonfinite)
    if d.step1_source == "ray_data":  # step 1's images and teacher embeddings come from Ray Data actors
        epoch_batches = epoch_source(lambda first: worker_batches(rank, first, total, d.stream_prefetch),
                                     d.iterations_per_epoch)
    else:
        stream = LatentStream(gen, d.batch_size, world, rank, cfg.run.seed, second_batch=d.mode == "static_2x")

        def epoch_batches(epoch: int, first: int):
            return stream.steps(epoch * d.iterations_per_epoch + first, (epoch + 1) * d.iterations_per_epoch)
    log.info("rank %d: step-1 batches from the %s, %d torch threads", rank,
             "Ray Data stream" if d.step1_source == "ray_data" else "worker", torch.get_num_threads())
    pairs = load_pairs(loop_config["bins"]) if rank == 0 else []
    cosines: list[torch.Tensor] = []
    expect = {"batch_size": d.batch_size, "mode": d.mode, "c": d.c, "student": d.student,
              "iterations_per_epoch": d.iterations_per_epoch, "seed": cfg.run.seed}

    def start(state: dict) -> None:
        kd.student = ray.train.torch.prepare_model(student) if world > 1 else student
        kd.guard.total = state.get("nonfinite_total", 0)

    def step(i: int, batch) -> dict:
        set_lr([optimizer], schedule(i))
        out = kd(batch, i)
        if rank == 0:
            cosines.append(2 * kd.last_agreement.cpu() - 1)
        # s_mean: the batch mean of step 1's agreement s = (1 + cos(e_T, e_S)) / 2 that drives the re-sampling
        return {**out, **kd.times, "lr": schedule(i), "s_mean": kd.last_agreement.mean()}

    def periodic(i: int, last: bool) -> dict | None:
        extra: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if i % d.iterations_per_epoch == 0 and cosines:
                epoch = i // d.iterations_per_epoch
                png = agreement_histogram_png(torch.cat(cosines).numpy(), Path(tmp) / f"cos_epoch{epoch:03d}.png",
                                              f"{d.mode} c={d.c}: epoch {epoch}")
                wc.logger.artifact(png, "agreement")
                cosines.clear()
            if last and d.sample_grid:
                from fr.data.images import encode_image

                grid = resample_grid(gen, teacher, student, d.mode, d.c, d.sample_grid, cfg.run.seed + 999, device)
                png = Path(tmp) / "step1_vs_resampled.png"
                png.write_bytes(encode_image(grid, "png"))
                wc.logger.artifact(png, "samples")
        if pairs and ((d.eval_every and i % d.eval_every == 0) or last):
            extra.update(verify(module_embed01(student, device), pairs, prefix="student_"))
        return extra

    def save(dd: Path, state: dict, write: bool) -> None:
        if write:
            save_kd_checkpoint(dd, student, optimizer, {**state, **expect})

    parts = TrainerParts(
        total_steps=total, steps_per_epoch=d.iterations_per_epoch,
        epoch_batches=epoch_batches,
        step=step, batch_images=lambda batch: kd.images_per_iteration(len(batch.z)), save=save,
        load=lambda dd: load_kd_checkpoint(dd, student, optimizer, expect), nonfinite_total=lambda: kd.guard.total,
        state_fields=lambda i: dict(expect), start=start, periodic=periodic)
    run_worker_loop(wc, parts, d, Path(loop_config["export_dir"]), JOB)


# ------------------------------------------------------------------------------------------------
# driver side


def log_accuracy_curve(tracker: Any, teacher_metrics: dict[str, float], png: Path, mode: str, c: float) -> None:
    """The student's verification accuracy over the steps (from the run's metric history) against the
    teacher's on the same pairs, as one figure (``distill_model/accuracy_over_steps.png``)."""
    from evaluation.curves import plot_curves

    keys = [k for k in teacher_metrics if k.endswith("_accuracy")]
    series = {k.replace("teacher_", "student "): tracker.history(k.replace("teacher_", "student_")) for k in keys}
    if not any(series.values()):
        return
    plot_curves(series, png, {k.replace("teacher_", "teacher "): teacher_metrics[k] for k in keys},
                title=f"SynthDistill {mode}, c={c:g}: verification accuracy", ylabel="accuracy (%)", scale=100)
    tracker.artifact(png, "distill_model")


def run_distill(cfg: FacesynthConfig) -> dict[str, Any]:
    d = cfg.distill
    checked = validate_distill_config(cfg)
    init_ray(cfg.ray)
    export_dir = layout.model_dir(cfg, JOB).resolve()
    name = f"{cfg.run.name}-{JOB}"
    stream: dict[str, Any] = {}
    if d.step1_source == "ray_data":
        import ray

        check_stream_fits(d, ray.cluster_resources().get("CPU", 0))
        first = latest_checkpoint_step(layout.ray_storage(cfg) / name, STATE_FILE)
        stream = {"datasets": step1_datasets(d, generator_kwargs(cfg), (str(teacher_path(cfg).resolve()), d.teacher_arch),
                                             cfg.run.seed, first, d.epochs * d.iterations_per_epoch),
                  "dataset_config": dataset_config()}
    clear_stopped(export_dir)
    with mlflow_run(cfg, JOB, resume=True) as tracker:
        teacher = checked["teacher"]
        pairs = load_pairs(checked["bins"])
        teacher_metrics = verify(teacher, pairs, prefix="teacher_")
        tracker.metrics(teacher_metrics)
        tracker.tags({"distill.mode": d.mode, "distill.generator": d.generator})
        loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": absolute_uri(tracking_uri(cfg)),
                       "teacher": str(teacher_path(cfg).resolve()), "bins": checked["bins"],
                       "export_dir": str(export_dir)}
        trainer = make_torch_trainer(train_loop, loop_config, name=name,
                                     storage=layout.ray_storage(cfg), num_workers=d.num_workers, use_gpu=d.use_gpu,
                                     cpus_per_worker=d.cpus_per_worker, max_failures=d.max_failures,
                                     keep_checkpoints=d.keep_checkpoints, **stream)
        result, seconds = fit_checked(trainer, export_dir, JOB, d.max_nonfinite, tracker)
        student = build_student(d.student, d.embedding_size, d.student_input_size)
        with result.checkpoint.as_directory() as ckpt:
            from safetensors.torch import load_file

            student.load_state_dict(load_file(str(Path(ckpt) / STUDENT_FILE)), strict=True)
            state = json.loads((Path(ckpt) / STATE_FILE).read_text())
        final = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        student_metrics = {k: v for k, v in final.items() if k.startswith("student_")}
        summary = {"teacher": teacher.name, "student": student.name, "mode": d.mode, "c": d.c,
                   "generator": d.generator, "train_seconds": seconds, "images_seen": state.get("images_seen"),
                   "steps": state.get("step"), **teacher_metrics, **student_metrics}
        save_student(student, export_dir / "student", extra={"distill": summary})
        (export_dir / "metrics.json").write_text(json.dumps({"summary": summary, "final": final, "state": state},
                                                            indent=1, default=float))
        tracker.metrics({"train_seconds": seconds, **{f"student_{k}": v for k, v in
                                                      complexity(student, d.student_input_size).items()}})
        for name in ("student.json", "metrics.json"):
            tracker.artifact(export_dir / name, "distill_model")
        log_accuracy_curve(tracker, teacher_metrics, export_dir / "accuracy_over_steps.png", d.mode, d.c)
        log.info("distill: %s (%s, c=%g) in %.1f s; exported to %s", student.name, d.mode, d.c, seconds, export_dir)
        return {"summary": summary, "export_dir": export_dir, "metrics": final}
