"""FR training throughput: the same IResNet-50 + partial-FC ArcFace SGD step, bare PyTorch vs Ray Train.

    python bench/fr_train_throughput.py [--batch 16] [--warmup 2] [--steps 4] [--order bare,ray,ray,bare]
                                        [--device cpu|cuda] [--out bench/results/fr_train_throughput.json]

Run it from the repository root. Every measurement builds a fresh model (same seed) and runs
``--warmup`` untimed then ``--steps`` timed steps on one fixed random batch (112x112, random labels):
data loading is excluded, so this isolates the cost of running the step inside a Ray Train worker
(``TorchTrainer``, 1 worker holding all CPUs, and the GPU with ``--device cuda``) compared with the
driver process. Both sides use the same number of torch threads. A measurement's images/s is
``batch / median step time``; with repeats (``--order bare,ray,ray,bare``) the table shows each run
and the ratio of the medians (ray / bare), also for the CPU time per step (bare / ray), the spread
of the repeats, and the CPU that all other processes (Ray's daemons and actors among them) used
while the steps ran. The Ray side runs the trainer ``train_fr`` uses (``make_torch_trainer``).

OpenMP waiting: a local Ray started by ``init_ray`` gives its workers the settings of
``ray_jobs.cluster.LOCAL_TRAIN_ENV``; ``--ray-omp default|passive|spincount=N`` replaces them for the
Ray side. The bare side keeps what this process was started with (``OMP_WAIT_POLICY=PASSIVE python
bench/...``). Both are recorded per run. ``--backbone iresnet_tiny --backbone-kwargs '{...}'`` measures
a small CPU model such as the ``tiny`` preset's, where each op is short.

Ray starts its worker processes at niceness 15 (``RAY_worker_niceness``); on a CPU shared with other
work that alone lowers the worker's share. ``--ray-worker-niceness 0`` starts the local Ray with
workers at the driver's priority.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_settings() -> str:
    """This process's OpenMP waiting settings, as libgomp read them when torch was loaded."""
    return " ".join(f"{k}={os.environ[k]}" for k in OMP_KEYS if k in os.environ)


# read before torch is imported: init_ray sets its values for the Ray workers it starts, not for the driver
BARE_OPENMP = openmp_settings()

import torch  # noqa: E402

from bench.common import REPO_ROOT, format_table, machine_busy_cpu_s, machine_info, write_json  # noqa: E402
from fr.fr_model import build_fr_net  # noqa: E402
from fr.head_registry import HeadSpec, build_head  # noqa: E402
from fr.margins import build_margin  # noqa: E402
from fr.train_step import FRTrainStep  # noqa: E402

TARGET_RATIO = 0.95


@dataclass(frozen=True)
class StepConfig:
    """Everything one measurement needs; sent as a dict to the Ray worker."""

    backbone: str = "iresnet50"
    backbone_kwargs: dict = field(default_factory=dict)
    batch: int = 16
    num_classes: int = 10_000
    sample_rate: float = 1.0
    warmup: int = 2
    steps: int = 4
    threads: int = os.cpu_count() or 1
    lr: float = 0.1
    grad_clip: float = 5.0
    seed: int = 0


def build_training(cfg: StepConfig, device: torch.device):
    """``train_fr``'s step: the FR net, the ``partial_fc`` ArcFace head (world size 1), two SGD optimizers in
    ``fr.train_step.FRTrainStep``; one fixed batch."""
    torch.manual_seed(cfg.seed)
    net = build_fr_net(cfg.backbone, 512, False, cfg.backbone_kwargs).to(device)
    head = build_head("partial_fc", HeadSpec(num_classes=cfg.num_classes, embedding_size=512,
                                             margin=build_margin("arcface"), sample_rate=cfg.sample_rate,
                                             seed=cfg.seed)).to(device)
    optimizers = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4) for m in (net, head)]
    step = FRTrainStep(net, head, *optimizers, device=device, grad_clip=cfg.grad_clip)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn((cfg.batch, 3, 112, 112), generator=gen).to(device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch,), generator=gen).to(device)
    return step, images, labels


def train_step(step: FRTrainStep, images, labels, lr: float) -> torch.Tensor:
    """One optimisation step of ``train_fr`` (forward, margin-softmax loss, finiteness check, backward,
    clipped SGD); returns the detached loss."""
    return step(images, labels, lr, 0)["loss"]


def measure(cfg: StepConfig, device: torch.device, openmp: str) -> dict[str, Any]:
    """Warm up, then time each step (synchronising a GPU); images/s from the median step time.

    Also records the process CPU time per step (all threads): under CPU contention the wall time
    depends on the scheduler's share, the CPU time much less.
    """
    torch.set_num_threads(cfg.threads)
    step, images, labels = build_training(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.warmup):
        train_step(step, images, labels, cfg.lr)
    sync()
    times, cpu_times, loss = [], [], None
    busy0, own0, wall0 = machine_busy_cpu_s(), time.process_time(), time.perf_counter()
    for _ in range(cfg.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = train_step(step, images, labels, cfg.lr)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    # what every other process (Ray's daemons and actors included) used of the machine meanwhile
    others_cores = (machine_busy_cpu_s() - busy0 - (time.process_time() - own0)) / (time.perf_counter() - wall0)
    median = statistics.median(times)
    return {
        "others_cpu_cores": max(others_cores, 0.0),
        "images_per_s": cfg.batch / median,
        "median_step_s": median,
        "median_step_cpu_s": statistics.median(cpu_times),
        "step_s": times,
        "step_cpu_s": cpu_times,
        "niceness": os.nice(0),
        "final_loss": float(loss),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        "openmp": openmp,
        "pid": os.getpid(),
    }


def ray_worker_loop(config: dict) -> None:
    """Ray Train worker: the same :func:`measure`, reported with ``ray.train.report``.

    Ray Train v2 only keeps the metrics that come with a checkpoint in ``Result.metrics``, so a tiny
    checkpoint (the metrics as JSON) goes with them; it is written after the timed steps.
    """
    import ray.train
    import ray.train.torch

    cfg = StepConfig(**config["step"])
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    # this worker's own environment, which its libgomp read at start (a global of this script would
    # arrive pickled from the driver)
    metrics = measure(cfg, device, openmp_settings())
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_ray(cfg: StepConfig, use_gpu: bool, worker_cpus: int) -> dict[str, Any]:
    """One ``TorchTrainer`` run with a single worker; returns the metrics the worker reported."""
    from ray_jobs.train_common import make_torch_trainer

    with tempfile.TemporaryDirectory() as storage:  # the trainer train_fr uses
        trainer = make_torch_trainer(ray_worker_loop, {"step": asdict(cfg), "use_gpu": use_gpu},
                                     name="bench-fr-throughput", storage=Path(storage), num_workers=1,
                                     use_gpu=use_gpu, cpus_per_worker=worker_cpus)
        result = trainer.fit()
    if result.error is not None or not result.metrics:
        raise RuntimeError(f"Ray Train measurement failed: {result.error}")
    return dict(result.metrics)


def apply_ray_omp(choice: str) -> None:
    """Replace init_ray's OpenMP settings for the Ray workers (before Ray starts) by ``choice``."""
    from ray_jobs.cluster import LOCAL_TRAIN_ENV

    if choice == "shipped":
        return
    for key in OMP_KEYS:
        LOCAL_TRAIN_ENV.pop(key, None)
    if choice == "passive":
        LOCAL_TRAIN_ENV["OMP_WAIT_POLICY"] = "PASSIVE"
    elif choice.startswith("spincount="):
        LOCAL_TRAIN_ENV["GOMP_SPINCOUNT"] = str(int(choice.split("=", 1)[1]))
    elif choice != "default":
        raise ValueError(f"--ray-omp must be shipped, default, passive or spincount=N, got {choice!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=StepConfig.batch)
    ap.add_argument("--warmup", type=int, default=StepConfig.warmup)
    ap.add_argument("--steps", type=int, default=StepConfig.steps)
    ap.add_argument("--classes", type=int, default=StepConfig.num_classes)
    ap.add_argument("--sample-rate", type=float, default=StepConfig.sample_rate)
    ap.add_argument("--backbone", default=StepConfig.backbone)
    ap.add_argument("--backbone-kwargs", type=json.loads, default={},
                    help='JSON, e.g. the tiny preset\'s: \'{"base_width": 16, "layers": [1, 1, 1, 1], "input_size": 48, '
                         '"auto_resize": true}\'')
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads on both sides")
    ap.add_argument("--worker-cpus", type=int, default=os.cpu_count() or 1, help="Ray worker CPU resource")
    ap.add_argument("--order", default="bare,ray,ray,bare,bare,ray,ray,bare", help="comma-separated sequence of bare/ray runs")
    ap.add_argument("--ray-worker-niceness", type=int, default=None,
                    help="RAY_worker_niceness for the local Ray started here (Ray's default: 15)")
    ap.add_argument("--ray-omp", default="shipped",
                    help="OpenMP waiting in the Ray workers: 'shipped' (what init_ray sets), 'default' (libgomp's "
                         "spin-then-sleep), 'passive' or 'spincount=N' (GOMP_SPINCOUNT=N)")
    ap.add_argument("--out", default=str(REPO_ROOT / "bench/results/fr_train_throughput.json"))
    args = ap.parse_args()
    order = [s.strip() for s in args.order.split(",") if s.strip()]
    if not order or set(order) - {"bare", "ray"} or not {"bare", "ray"} <= set(order):
        raise ValueError(f"--order must list 'bare' and 'ray' runs (comma-separated), got {args.order!r}")
    if min(args.batch, args.steps, args.threads, args.worker_cpus) < 1 or args.warmup < 0:
        raise ValueError("--batch, --steps, --threads, --worker-cpus must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    cfg = StepConfig(backbone=args.backbone, backbone_kwargs=args.backbone_kwargs, batch=args.batch, num_classes=args.classes,
                     sample_rate=args.sample_rate, warmup=args.warmup, steps=args.steps, threads=args.threads)
    machine = machine_info(args.device)

    if "ray" in order:
        import ray

        from ray_jobs.cluster import init_ray
        from ray_jobs.config import RaySection

        apply_ray_omp(args.ray_omp)
        if args.ray_worker_niceness is not None:  # read by the raylet when init_ray starts it
            os.environ["RAY_worker_niceness"] = str(args.ray_worker_niceness)
        init_ray(RaySection())
    runs = []
    for i, kind in enumerate(order):
        t0 = time.perf_counter()
        if kind == "bare":
            res = measure(cfg, torch.device(args.device), BARE_OPENMP)
        else:
            res = run_ray(cfg, args.device == "cuda", args.worker_cpus)
        res.update(run=i + 1, kind=kind, wall_s=time.perf_counter() - t0, loadavg_1m=os.getloadavg()[0])
        runs.append(res)
        print(f"run {i + 1}/{len(order)} {kind}: {res['images_per_s']:.2f} img/s "
              f"(median step {res['median_step_s']:.2f} s, wall {res['wall_s']:.0f} s)", flush=True)
    if "ray" in order:
        ray.shutdown()

    def median_of(key: str, kind: str) -> float:
        return statistics.median(r[key] for r in runs if r["kind"] == kind)

    medians = {k: median_of("images_per_s", k) for k in ("bare", "ray")}
    cpu_medians = {k: median_of("median_step_cpu_s", k) for k in ("bare", "ray")}
    ratio, cpu_ratio = medians["ray"] / medians["bare"], cpu_medians["bare"] / cpu_medians["ray"]
    rows = [dict(r, what=f"{r['run']}. {r['kind']}") for r in runs]
    spread = {k: (min(r["images_per_s"] for r in runs if r["kind"] == k),
                  max(r["images_per_s"] for r in runs if r["kind"] == k)) for k in medians}
    rows += [{"what": f"median {k}", "images_per_s": medians[k], "median_step_cpu_s": cpu_medians[k]}
             for k in medians]
    table = format_table(rows, [
        ("what", "run", str),
        ("images_per_s", "img/s", "{:.2f}".format),
        ("median_step_s", "median step s", "{:.2f}".format),
        ("median_step_cpu_s", "CPU s/step", "{:.2f}".format),
        ("others_cpu_cores", "others' CPU (cores)", "{:.2f}".format),
        ("niceness", "nice", str),
        ("torch_threads", "torch threads", str),
        ("OMP_NUM_THREADS", "OMP_NUM_THREADS", lambda v: v or "(unset)"),
        ("openmp", "OpenMP waiting", lambda v: v or "(default)"),
        ("loadavg_1m", "load 1m", "{:.2f}".format),
    ])
    header = (f"{cfg.backbone} {cfg.backbone_kwargs or ''} 112x112, batch {cfg.batch}, PartialFC ArcFace {cfg.num_classes} classes "
              f"(sample_rate {cfg.sample_rate}), SGD; {cfg.warmup} warm-up + {cfg.steps} timed steps, "
              f"random tensors (no data loading); device {args.device}, {machine['cpu_model']}, "
              f"{machine['cpu_count']} CPUs")
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    # repeats of one configuration differ on a shared VM: show how much, next to the ratio
    noise = " ".join(f"{k} {lo:.2f}-{hi:.2f} img/s ({hi / lo - 1:+.0%});" for k, (lo, hi) in spread.items())
    print(f"\n{header}\n{table}\nray/bare images/s = {ratio:.3f} ({verdict} the {TARGET_RATIO} target); "
          f"CPU time per step bare/ray = {cpu_ratio:.3f}\nspread of the repeats: {noise}")
    write_json(args.out, {
        "benchmark": "fr_train_throughput", "config": asdict(cfg), "order": order, "worker_cpus": args.worker_cpus,
        "machine": machine, "loadavg_end": [round(x, 2) for x in os.getloadavg()], "runs": runs,
        "median_images_per_s": medians, "ray_over_bare": ratio, "target": TARGET_RATIO,
        "median_step_cpu_s": cpu_medians, "cpu_bare_over_ray": cpu_ratio, "images_per_s_min_max": spread,
        "ray_worker_niceness": args.ray_worker_niceness, "ray_omp": args.ray_omp,
        "notes": "images/s = batch / median step time; one fixed random batch, data loading excluded",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
