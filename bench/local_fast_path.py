"""Local fast path (issue 15 part 4): batch inference in the driver vs through Ray Data, on the toy set.

    python bench/local_fast_path.py [--images 2000] [--threads 1] [--gen-rows 48]

Embedding: the same toy shards (112 px JPEG, 500 rows each) and tiny evaluator as ``bench/eval_scaling.py``
(``iresnet_tiny``, 32 px input, auto-resize, 512-d, flip test), through
(a) the plain loop ``evaluation.embed.embed_shards`` in this process;
(b) the path the jobs choose, ``ray_jobs.embedding_pass.embed_on_chosen_path`` with the default config
    (``ray.fast_local=auto``, one actor, ``evaluate.cpus_per_actor=--threads``), timed as a job pays it:
    it would start Ray itself if it chose Ray Data;
(c) Ray Data (``embed_shards_on_ray``) on the same local Ray, twice: run 1 also starts the actor's
    worker process, run 2 reuses what Ray keeps. Starting Ray itself is timed separately.
``ratio`` = plain-loop time / this path's time (1.0 = as fast as the plain loop). Every path's
embeddings are compared with the plain loop's (max abs difference).

Generation: a ``--gen-rows`` plan through ``ray_jobs.shard_stream.stream_plan_to_shards`` with a tiny 32 px
DiT (8 DDIM steps), in the driver (``ray.fast_local=always``) and through Ray Data (``never``); the shard
bytes of both are compared.

The Ray Data overhead of a pass, ``F`` = its time - the in-process time of the same work, and the rows
the driver handles in ``F`` justify ``ray_jobs.local_path.LOCAL_MAX_ROWS`` (docs/ux_notes.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402

PER_CLASS = 20


class _NoTracker:
    def metrics(self, values, step=None):
        pass


def _identities(num_images: int) -> int:
    return max(1, num_images // PER_CLASS)


def _toy_shards(root: Path, num_images: int) -> tuple[Path, list[Path]]:
    from fr.data.shards import build_dataset_info, list_shards, write_dataset_json, write_shards
    from fr.data.toyfaces import ToyFaceConfig, iter_toy_records

    data = root / "train"
    toy = ToyFaceConfig(num_identities=_identities(num_images), min_images=PER_CLASS, max_images=PER_CLASS, seed=0)
    write_shards(data, iter_toy_records(toy, range(toy.num_identities)), rows_per_shard=500)
    write_dataset_json(data, build_dataset_info(data, 112, {"bench": "local_fast_path"}))
    return data, list_shards(data)


def _max_diff(a: dict, b: dict, shards: list[Path]) -> float:
    import numpy as np

    return float(max(np.abs(a[p].embeddings - b[p].embeddings).max() for p in shards))


def embedding_rows(num_images: int, threads: int, batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    from evaluation.embed import embed_shards, load_evaluator
    from evaluation.embedding_cache import evaluator_key
    from fr.backbones import build_backbone, save_backbone
    from ray_jobs.cluster import init_ray
    from ray_jobs.config import load_config
    from ray_jobs.embedding_pass import EvaluatorFiles, embed_on_chosen_path, embed_shards_on_ray
    from ray_jobs.local_path import choose_path

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, shards = _toy_shards(Path(tmp), num_images)
        n = _identities(num_images) * PER_CLASS
        torch.manual_seed(0)
        prefix = save_backbone(build_backbone("iresnet_tiny", 512, input_size=32, auto_resize=True),
                               Path(tmp) / "backbone")
        files = EvaluatorFiles(Path(prefix), None, None, True, evaluator_key(prefix, None, True))
        cfg = load_config(None, [f"evaluate.batch_size={batch_size}", f"evaluate.cpus_per_actor={threads}"])
        sizes = {data: 112}

        t0 = time.perf_counter()
        loop = embed_shards(load_evaluator(prefix, None, flip=True), shards, 112, batch_size)
        t_loop = time.perf_counter() - t0

        choice = choose_path(cfg.ray, "embedding", n, cfg.evaluate.num_actors)
        t0 = time.perf_counter()
        chosen = embed_on_chosen_path(cfg, files, shards, sizes)
        t_chosen = time.perf_counter() - t0

        t0 = time.perf_counter()
        init_ray(cfg.ray)
        t_init = time.perf_counter() - t0
        ray_runs = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = embed_shards_on_ray(cfg, files, shards, sizes)
            ray_runs.append((time.perf_counter() - t0, _max_diff(loop, out, shards)))
    rows = [{"path": "plain loop (1 process)", "images": n, "seconds": t_loop, "ratio": 1.0, "max_abs_diff": 0.0},
            {"path": f"chosen: {choice.name} ({choice.reason})", "images": n, "seconds": t_chosen,
             "ratio": t_loop / t_chosen, "max_abs_diff": _max_diff(loop, chosen, shards)},
            {"path": "starting the local Ray (ray.init)", "images": None, "seconds": t_init}]
    for k, (t, diff) in enumerate(ray_runs):
        rows.append({"path": f"Ray Data, 1 actor, run {k + 1}", "images": n, "seconds": t, "ratio": t_loop / t,
                     "max_abs_diff": diff})
    for r in rows:
        if r.get("images"):
            r["images_per_s"] = r["images"] / r["seconds"]
    overhead = min(t for t, _ in ray_runs) - t_loop
    summary = {"ray_data_overhead_s": overhead, "in_process_images_per_s": n / t_loop,
               "rows_in_overhead": overhead * n / t_loop, "chosen": choice.name, "ratio_plain_over_chosen": t_loop / t_chosen}
    return rows, summary


def generation_rows(num_rows: int, threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import numpy as np
    import torch

    from fr.data.alignment import template_for_size
    from fr.data.shards import list_shards
    from fr.prototypes import save_prototypes
    from generation.conditions import plan_generation
    from generation.dit import build_dit, save_dit
    from ray_jobs.config import RaySection
    from ray_jobs.shard_stream import ActorPool, stream_plan_to_shards

    torch.set_num_threads(threads)
    per_identity = 4
    identities = max(1, num_rows // per_identity)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        save_dit(build_dit("tiny", image_size=32), root / "dit")
        save_prototypes(root / "prototypes", torch.randn(identities, 512), 0, identities)
        landmarks = template_for_size(32).astype(np.float32)[None].repeat(4, 0)
        sampler = {"model_dir": str(root / "dit"), "prototypes_prefix": str(root / "prototypes"),
                   "landmark_sets": landmarks, "output_size": 32, "steps": 8, "guidance": 2.0, "eta": 0.0}
        plan = plan_generation(0, identities, "virtual", 0, per_identity, len(landmarks), seed=0)
        pool = ActorPool(num_actors=1, batch_size=16, cpus_per_actor=float(threads))
        times = {}
        for mode in ("always", "never", "never"):
            out = root / f"out_{mode}_{len(times)}"
            t0 = time.perf_counter()
            stream_plan_to_shards(plan, sampler, out, 16, pool, _NoTracker(), ray_cfg=RaySection(fast_local=mode))
            times[len(times)] = (mode, time.perf_counter() - t0, out)
        reference = [p.read_bytes() for p in list_shards(times[0][2])]
        rows = []
        for k, (mode, t, out) in times.items():
            same = [p.read_bytes() for p in list_shards(out)] == reference
            label = "in-process (fast_local=always)" if mode == "always" else f"Ray Data (fast_local=never), run {k}"
            rows.append({"path": label, "images": plan.num_rows, "seconds": t, "images_per_s": plan.num_rows / t,
                         "ratio": times[0][1] / t, "same_bytes": same})
    overhead = min(t for m, t, _ in times.values() if m == "never") - times[0][1]
    summary = {"ray_data_overhead_s": overhead, "in_process_images_per_s": plan.num_rows / times[0][1],
               "rows_in_overhead": overhead * plan.num_rows / times[0][1]}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gen-rows", type=int, default=48)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "local_fast_path.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    machine = machine_info()
    print("embedding ...", flush=True)
    emb, emb_summary = embedding_rows(args.images, args.threads, args.batch_size)
    print("generation ...", flush=True)
    gen, gen_summary = generation_rows(args.gen_rows, args.threads) if args.gen_rows else ([], {})

    def fmt(digits: int):
        return lambda v: f"{v:.{digits}f}"

    print()
    print(format_table(emb, [("path", "embedding path", str), ("images", "images", str), ("seconds", "s", fmt(2)),
                             ("images_per_s", "img/s", fmt(1)), ("ratio", "plain/this", fmt(2)),
                             ("max_abs_diff", "max |diff|", lambda v: f"{v:.1e}")]))
    print(f"Ray Data overhead per pass {emb_summary['ray_data_overhead_s']:.1f} s = "
          f"{emb_summary['rows_in_overhead']:.0f} rows of in-process embedding")
    if gen:
        print()
        print(format_table(gen, [("path", "generation path", str), ("images", "images", str), ("seconds", "s", fmt(2)),
                                 ("images_per_s", "img/s", fmt(2)), ("ratio", "in-process/this", fmt(2)),
                                 ("same_bytes", "same shard bytes", str)]))
        print(f"Ray Data overhead per pass {gen_summary['ray_data_overhead_s']:.1f} s = "
              f"{gen_summary['rows_in_overhead']:.0f} rows of in-process generation")
    machine["loadavg_end_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(args.out, {"machine": machine, "args": vars(args), "embedding": emb,
                                 "embedding_summary": emb_summary, "generation": gen, "generation_summary": gen_summary,
                                 "notes": __doc__})
    print(f"\nwrote {os.path.relpath(path, REPO_ROOT)}")


if __name__ == "__main__":
    main()
