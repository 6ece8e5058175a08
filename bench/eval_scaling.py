"""Evaluation at scale: embedding throughput (Ray Data actor pool vs a plain loop) and the cost of the
identity-leakage nearest-neighbour search at 1e4 / 1e5 embeddings, extrapolated to 1e6.

    python bench/eval_scaling.py [--images 2000] [--ns 1e4,1e5] [--max-queries 10000] [--threads 1]

Embedding: the same toy shards (112px JPEG) and the same tiny evaluator (``iresnet_tiny``, 32px input,
auto-resize, 512-d, flip test) through (a) ``evaluation.embed.embed_shards`` in one process and (b)
``ray_jobs.embedding_pass.embed_shards_on_ray`` (decode + embed on an actor pool of ``--actors`` actors), twice.
All times include decoding; (b) includes starting the actor pool, as every job run pays it (run 1
also starts Ray's worker processes). ``vs loop`` = loop time / this time (throughput ratio). The
embeddings of (a) and (b) are compared (max abs difference).

Nearest neighbours (image-mode leakage, N synthetic vs N real, 512-d random embeddings, real labels
in classes of 10): the two searches of ``evaluation.leakage``: synthetic -> top-1 real image and real ->
nearest real image of another class, each O(N^2 d). At large N only the first ``--max-queries``
queries of each search run; the time is scaled by N / queries (the cost per query is linear in the
keys). Each N runs in its own subprocess; ``peak`` is the RSS high-water mark (``VmHWM``) during the
searches minus the RSS with the inputs loaded, next to the bound of ``evaluation.knn.memory_bound_bytes``
and that bound plus the int64 copy of the tie mask it leaves out (``bound+i64``, see ``int64_count_mib``).
1e6 is extrapolated: time x (1e6 / N_max)^2, working memory = bound+i64 (independent of N), inputs
2 * N * d * 4 bytes (they may be memory-mapped: ``topk_cosine`` reads them chunk by chunk).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIB, REPO_ROOT, format_table, machine_info, proc_status_kib, write_json  # noqa: E402

DIM = 512
CLASS_SIZE = 10
QUERY_CHUNK, KEY_CHUNK = 4096, 65536  # the evaluate config defaults


def memory_bound_bytes_mib(qc: int, kc: int) -> float:
    from evaluation.knn import memory_bound_bytes

    return memory_bound_bytes(qc, kc, 1, DIM) / MIB


def int64_count_mib(qc: int, kc: int) -> float:
    """The temporary that ``memory_bound_bytes`` leaves out: ``bool_block.sum(dim=1)`` in
    ``knn._block_topk`` converts the [qc, kc] tie mask to int64 before reducing (8 bytes per entry)."""
    return qc * kc * 8 / MIB


def knn_child(n: int, max_queries: int, threads: int) -> dict[str, Any]:
    """One N: time and peak memory of both leakage searches (run in a fresh process)."""
    import numpy as np
    import torch

    from evaluation.knn import nearest_negative, topk_cosine

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    synth = rng.standard_normal((n, DIM), dtype=np.float32)
    real = rng.standard_normal((n, DIM), dtype=np.float32)
    labels = np.arange(n, dtype=np.int64) // CLASS_SIZE
    q = min(n, max_queries)
    topk_cosine(synth[:64], real[:4096], 1)  # warm-up (allocator, kernels)
    base = proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    t0 = time.perf_counter()
    topk_cosine(synth[:q], real, 1, query_chunk=QUERY_CHUNK, key_chunk=KEY_CHUNK)
    t1 = time.perf_counter()
    nearest_negative(real[:q], labels[:q], real, labels, query_chunk=QUERY_CHUNK, key_chunk=KEY_CHUNK)
    t2 = time.perf_counter()
    scale = n / q
    return {
        "n": n, "queries": q, "threads": threads,
        "synth_to_real_s": (t1 - t0) * scale, "real_nearest_negative_s": (t2 - t1) * scale,
        "leakage_search_s": (t2 - t0) * scale, "measured_s": t2 - t0,
        "peak_mib": (proc_status_kib("VmHWM") - base) / 1024,
        "bound_mib": memory_bound_bytes_mib(min(QUERY_CHUNK, q), min(KEY_CHUNK, n)),
        "bound_plus_int64_mib": memory_bound_bytes_mib(min(QUERY_CHUNK, q), min(KEY_CHUNK, n))
        + int64_count_mib(min(QUERY_CHUNK, q), min(KEY_CHUNK, n)),
        "inputs_mib": 2 * n * DIM * 4 / MIB,
    }


def knn_rows(ns: list[int], max_queries: int, threads: int) -> list[dict[str, Any]]:
    rows = []
    for n in ns:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--max-queries", str(max_queries),
                              "--threads", str(threads)], capture_output=True, text=True, cwd=REPO_ROOT,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  N={n}: {rows[-1]['leakage_search_s']:.1f} s", flush=True)
    big = max(rows, key=lambda r: r["n"])
    n6 = 1_000_000
    rows.append({"n": n6, "queries": None, "threads": threads, "extrapolated": True,
                 "synth_to_real_s": big["synth_to_real_s"] * (n6 / big["n"]) ** 2,
                 "real_nearest_negative_s": big["real_nearest_negative_s"] * (n6 / big["n"]) ** 2,
                 "leakage_search_s": big["leakage_search_s"] * (n6 / big["n"]) ** 2,
                 "peak_mib": None, "bound_mib": memory_bound_bytes_mib(QUERY_CHUNK, KEY_CHUNK),
                 "bound_plus_int64_mib": memory_bound_bytes_mib(QUERY_CHUNK, KEY_CHUNK)
                 + int64_count_mib(QUERY_CHUNK, KEY_CHUNK),
                 "inputs_mib": 2 * n6 * DIM * 4 / MIB})
    return rows


def embedding_rows(num_images: int, actors: int, batch_size: int, threads: int) -> list[dict[str, Any]]:
    """Plain loop vs Ray Data actor pool on the same shards and evaluator."""
    import numpy as np
    import torch

    from evaluation.embed import Embeddings, embed_shards, load_evaluator
    from evaluation.embedding_cache import evaluator_key
    from fr.backbones import build_backbone, save_backbone
    from fr.data.shards import build_dataset_info, list_shards, write_dataset_json, write_shards
    from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
    from ray_jobs.cluster import init_ray
    from ray_jobs.config import load_config
    from ray_jobs.embedding_pass import EvaluatorFiles, embed_shards_on_ray

    torch.set_num_threads(threads)
    per_class = 20
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train"
        toy = ToyFaceConfig(num_identities=max(1, num_images // per_class), min_images=per_class,
                            max_images=per_class, seed=0)
        write_shards(data, iter_toy_records(toy, range(toy.num_identities)), rows_per_shard=500)
        write_dataset_json(data, build_dataset_info(data, 112, {"bench": "eval_scaling"}))
        shards = list_shards(data)
        torch.manual_seed(0)
        prefix = save_backbone(build_backbone("iresnet_tiny", 512, input_size=32, auto_resize=True),
                               Path(tmp) / "backbone")
        n = toy.num_identities * per_class

        t0 = time.perf_counter()
        loop = embed_shards(load_evaluator(prefix, None, flip=True), shards, 112, batch_size)
        t_loop = time.perf_counter() - t0

        cfg = load_config(None, [f"evaluate.num_actors={actors}", f"evaluate.batch_size={batch_size}",
                                 f"evaluate.cpus_per_actor={threads}", "ray.task_cpus=0.5"])
        init_ray(cfg.ray)
        files = EvaluatorFiles(prefix, None, None, True, evaluator_key(prefix, None, True))
        ray_runs = []
        for _ in range(2):  # the first run also starts Ray worker processes; the second reuses idle ones
            t0 = time.perf_counter()
            ray_out = embed_shards_on_ray(cfg, files, shards, {data: 112})
            ray_runs.append(time.perf_counter() - t0)
        diff = float(np.abs(Embeddings.concat([loop[p] for p in shards]).embeddings
                            - Embeddings.concat([ray_out[p] for p in shards]).embeddings).max())
    rows = [{"path": "plain loop (1 process)", "images": n, "seconds": t_loop, "images_per_s": n / t_loop,
             "ratio": 1.0, "max_abs_diff": 0.0}]
    for k, t in enumerate(ray_runs):
        rows.append({"path": f"Ray Data, {actors} actor(s), run {k + 1}", "images": n, "seconds": t,
                     "images_per_s": n / t, "ratio": t_loop / t, "max_abs_diff": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ns", default="1e4,1e5")
    parser.add_argument("--max-queries", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "eval_scaling.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(knn_child(args.child, args.max_queries, args.threads)))
        return

    print("embedding throughput ...", flush=True)
    emb = embedding_rows(args.images, args.actors, args.batch_size, args.threads)
    print("nearest-neighbour search ...", flush=True)
    knn = knn_rows([int(float(x)) for x in args.ns.split(",")], args.max_queries, args.threads)

    def fmt(digits: int):
        return lambda v: f"{v:.{digits}f}"

    print()
    print(format_table(emb, [("path", "embedding path", str), ("images", "images", str),
                             ("seconds", "s", fmt(2)), ("images_per_s", "img/s", fmt(1)),
                             ("ratio", "vs loop", fmt(2)), ("max_abs_diff", "max |diff|", lambda v: f"{v:.1e}")]))
    print()
    for r in knn:
        r["label"] = f"{r['n']:.0e}" + (" (extrapolated)" if r.get("extrapolated") else "")
    print(format_table(knn, [("label", "N synth x N real", str), ("queries", "queries run", str),
                             ("synth_to_real_s", "synth->real s", fmt(1)),
                             ("real_nearest_negative_s", "real nn-neg s", fmt(1)),
                             ("leakage_search_s", "total s", fmt(1)), ("peak_mib", "peak MiB", fmt(0)),
                             ("bound_mib", "bound MiB", fmt(0)), ("bound_plus_int64_mib", "bound+i64 MiB", fmt(0)),
                             ("inputs_mib", "inputs MiB", fmt(0))]))
    path = write_json(args.out, {"machine": machine_info(), "args": vars(args), "embedding": emb, "knn": knn,
                                 "notes": __doc__})
    print(f"\nwrote {os.path.relpath(path, REPO_ROOT)}")


if __name__ == "__main__":
    main()
