"""Ingestion throughput: toy generator (render + align + JPEG), shard writing, and shard reading
(torch Dataset decode vs the Ray Data reader), measured side by side in one run.

    python bench/ingest_throughput.py [--identities 200] [--out bench/results/ingest.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fr.data.face_dataset import FaceShardDataset  # noqa: E402
from fr.data.shards import write_shards  # noqa: E402
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--out", default="bench/results/ingest.json")
    args = ap.parse_args()
    toy = ToyFaceConfig(num_identities=args.identities, seed=0, min_images=4, max_images=40)
    rows = []

    t0 = time.perf_counter()
    records = list(iter_toy_records(toy, range(args.identities)))
    t_gen = time.perf_counter() - t0
    rows.append(("toy generator (render+align+jpeg), 1 process", len(records), t_gen))

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_shards(tmp, records, rows_per_shard=1000)
        rows.append(("shard write (parquet)", len(records), time.perf_counter() - t0))

        ds = FaceShardDataset(tmp)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        rows.append(("shard read: torch Dataset (decode+normalise), 1 process", len(ds), time.perf_counter() - t0))

        import ray

        from ray_jobs.cluster import init_ray
        from ray_jobs.config import RaySection
        from ray_jobs.data import read_face_shards

        init_ray(RaySection())
        read_face_shards(tmp).materialize()  # warm-up: worker start-up is not throughput
        t0 = time.perf_counter()
        n = 0
        for batch in read_face_shards(tmp, batch_size=256).iter_batches(batch_size=256, batch_format="numpy"):
            n += len(batch["label"])
        rows.append((f"shard read: Ray Data reader ({os.cpu_count()} CPUs)", n, time.perf_counter() - t0))
        ray.shutdown()

    results = [{"what": w, "images": n, "seconds": round(s, 3), "images_per_s": round(n / s, 1)} for w, n, s in rows]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    machine = f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    print(f"{'what':60s} {'images':>7s} {'s':>8s} {'img/s':>9s}")
    for r in results:
        print(f"{r['what']:60s} {r['images']:7d} {r['seconds']:8.2f} {r['images_per_s']:9.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
