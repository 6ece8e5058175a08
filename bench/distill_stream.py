"""SynthDistill: the student's training images/s with step 1 made in the worker vs streamed by Ray Data,
side by side in one run on this machine, and the generator's and teacher's own images/s.

    python bench/distill_stream.py [--iters 60] [--modes static,dynamic_w] [--batch 64]

Both runs are the ``distill`` job on Ray Train (the tiny preset's student TinyFaR-C@56px and toy
generator; the teacher is the tiny pipeline's stage-1 model when ``runs/tiny`` has one, else a randomly
initialised 48 px IResNet-tiny, which costs the same). ``worker``: the worker makes every batch itself
with all its CPUs (``--worker-cpus``, default 2). ``ray_data``: the worker (``--stream-worker-cpus``,
default 1.5) gets step 1's images and teacher embeddings from one Ray Data actor (``--actor-cpus``,
default 0.5); the re-sampled batch of the dynamic modes is still made in the worker. images/s is the
median over the job's logged intervals after the first (the training loop's own figure: data + step,
not the start-up, the checkpoints or the verification). The ratio ray_data / worker is the target
figure (>= 0.9 when generation is not the bottleneck). Per mode: in ``static`` the stream makes every image
the student sees; in ``dynamic_w`` only step 1's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402

TINY_TEACHER = REPO_ROOT / "runs" / "tiny" / "fr" / "tiny" / "backbone"
TINY_BINS = REPO_ROOT / "runs" / "tiny" / "data" / "toy" / "verify"


def _teacher_and_bins(tmp: Path) -> tuple[str, list[str], str]:
    """The tiny run's teacher and pairs, or a random 48 px IResNet-tiny and a small toy .bin in ``tmp``."""
    bins = sorted(TINY_BINS.glob("*.bin"))
    if TINY_TEACHER.with_suffix(".json").is_file() and bins:
        return str(TINY_TEACHER), [str(b) for b in bins], "runs/tiny stage-1 model"
    from fr.backbones import build_backbone, save_backbone
    from fr.data import toyfaces as tf
    from fr.data.binfile import write_bin

    torch.manual_seed(0)
    bb = build_backbone("iresnet_tiny", embedding_size=512, base_width=16, layers=[1, 1, 1, 1], input_size=48,
                        auto_resize=True)
    save_backbone(bb, tmp / "teacher" / "backbone")
    images, issame = tf.make_verification_pairs(tf.ToyFaceConfig(num_identities=20, image_size=112), 20, 100, seed=0)
    write_bin(tmp / "toy_verify.bin", images, issame)
    return str(tmp / "teacher" / "backbone"), [str(tmp / "toy_verify.bin")], "random 48 px IResNet-tiny"


def _own_rates(teacher: str, batch: int, repeats: int = 3) -> list[dict]:
    """The toy generator's and the teacher's images/s in this process (1 and 2 torch threads)."""
    from distill.teachers import load_teacher
    from distill.toy_generator import ToyLatentGenerator

    gen, t = ToyLatentGenerator(), load_teacher(teacher, "")
    w = gen.to_w(gen.sample_latents(batch, 0))
    images = gen.synthesize(w)
    rows = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for what, fn in (("toy generator", lambda: gen.synthesize(w)), ("teacher", lambda: t(images))):
            fn()
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            rows.append({"what": f"{what}, {threads} thread(s), in-process", "images_per_s":
                         batch * repeats / (time.perf_counter() - t0)})
    torch.set_num_threads(before)
    return rows


def _run(tmp: Path, name: str, common: list[str], extra: list[str]) -> dict:
    from mlflow import MlflowClient

    from ray_jobs.config import load_config
    from ray_jobs.distill import run_distill

    cfg = load_config(str(REPO_ROOT / "configs" / "tiny.yaml"), [f"run.output_dir={tmp}", f"run.name={name}",
                                                                  *common, *extra])
    t0 = time.perf_counter()
    out = run_distill(cfg)
    wall = time.perf_counter() - t0
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                             f"tags.mlflow.runName = '{name}-distill'")[0]
    rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "images_per_s"), key=lambda m: m.step)]
    final = out["metrics"]
    split = {k: final.get(k, 0.0) for k in ("generate_s", "teacher_s", "student_s")}
    return {"images_per_s": statistics.median(rates[1:] or rates), "intervals": len(rates),
            "interval_rates": [round(r, 1) for r in rates], "job_wall_s": wall,
            "train_seconds": out["summary"]["train_seconds"], "loss": final.get("loss"), **split}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--modes", default="static,dynamic_w", help="distill.mode values, comma separated")
    ap.add_argument("--worker-cpus", type=float, default=2.0)
    ap.add_argument("--stream-worker-cpus", type=float, default=1.5)
    ap.add_argument("--stream-worker-threads", type=int, default=2,
                    help="distill.worker_threads of the ray_data run (0: Ray's, int(--stream-worker-cpus))")
    ap.add_argument("--actor-cpus", type=float, default=0.5)
    ap.add_argument("--actor-threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "distill_stream.json"))
    args = ap.parse_args()
    from ray_jobs.cluster import init_ray
    from ray_jobs.config import RaySection

    init_ray(RaySection(num_cpus=2, num_gpus=0))
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        teacher, bins, teacher_name = _teacher_and_bins(tmp)
        runs = []
        for mode in args.modes.split(","):
            common = [f"distill.teacher={teacher}", f"distill.verify_bins=[{', '.join(bins)}]",
                      f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", f"distill.mode={mode}",
                      f"distill.batch_size={args.batch}", "distill.epochs=1",
                      f"distill.iterations_per_epoch={args.iters}", "distill.eval_every=0", "distill.sample_grid=0",
                      "distill.log_every=5", f"distill.checkpoint_every={args.iters}"]
            runs.append({"mode": mode, "source": "worker", "worker_cpus": args.worker_cpus, "actors": "-",
                         **_run(tmp, f"bench-{mode}-worker", common, [f"distill.cpus_per_worker={args.worker_cpus}"])})
            runs.append({"mode": mode, "source": "ray_data", "worker_cpus": args.stream_worker_cpus,
                         "actors": f"1 x {args.actor_cpus:g} CPU, {args.actor_threads} thread(s)",
                         **_run(tmp, f"bench-{mode}-stream", common, [
                             f"distill.cpus_per_worker={args.stream_worker_cpus}", "distill.step1_source=ray_data",
                             f"distill.worker_threads={args.stream_worker_threads}",
                             f"distill.stream_cpus_per_actor={args.actor_cpus}",
                             f"distill.stream_threads={args.actor_threads}"])})
        own = _own_rates(teacher, args.batch)
    fmt = lambda x: f"{x:.1f}"  # noqa: E731
    print(format_table(runs, [("mode", "mode", str), ("source", "step 1 from", str), ("worker_cpus", "worker CPUs", lambda x: f"{x:g}"),
                              ("actors", "stream actors", str), ("images_per_s", "train img/s", fmt),
                              ("generate_s", "worker generate s", fmt), ("teacher_s", "worker teacher s", fmt),
                              ("student_s", "worker student s", fmt), ("train_seconds", "job train s", fmt)]))
    print(format_table(own, [("what", "part", str), ("images_per_s", "images/s", fmt)]))
    ratios = {}
    for worker, stream in zip(runs[::2], runs[1::2]):
        ratios[worker["mode"]] = stream["images_per_s"] / worker["images_per_s"]
        print(f"ray_data / worker train images/s, {worker['mode']}: {ratios[worker['mode']]:.2f}  (batch {args.batch}, "
              f"{args.iters} iterations, teacher: {teacher_name})")
    write_json(args.out, {"machine": machine_info(), "args": vars(args), "teacher": teacher_name, "runs": runs,
                          "own_rates": own, "ray_data_over_worker": ratios})


if __name__ == "__main__":
    main()
