"""GIF head vs softmax head on the toy identities, through the ``train_fr`` job (Ray Train), n seeds each,
and the GIF lambda patterns (supplement Fig. 6b analogue).

Each row is one ``train_fr`` run of the tiny recipe (``configs/tiny.yaml`` train_fr: IResNet-tiny 48 px,
10 epochs, SGD 0.1) with ``train_fr.crfiqa=false train_fr.num_virtual=0`` for every head, so the heads are the
only difference:

* ``softmax``: the preset's head (ArcFace s=30, m=0.5);
* ``gif-<pattern>``: ``train_fr.head=gif`` alone (token head, no softmax term) with the codes of the
  ``build_codes`` job (``runs/<preset>/codes/...``; run it first) and lambda pattern ``<pattern>``.

Accuracy: 10-fold verification on the toy pairs at the end of training (the job's own
``verify/toy_verify/accuracy``). A run whose export already exists is read back, not
retrained (an interrupted sweep resumes).

    python bench/gif_heads_toy.py --seeds 0,1,2 --patterns uniform            # heads, 3 seeds
    python bench/gif_heads_toy.py --seeds 0 --patterns uniform,increasing,decreasing,gaussian --no-softmax

Writes ``bench/results/gif_heads_toy.json`` and prints mean +- std per head.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import format_table, machine_info, write_json  # noqa: E402

METRIC = "verify/toy_verify/accuracy"


def run_one(config: str, prefix: str, codes: Path, head: str, seed: int, extra: list[str],
            head_kwargs: str = "") -> dict:
    """One train_fr run (or its existing export); returns the row."""
    from ray_jobs.config import load_config
    from ray_jobs.jobs import JOBS
    from ray_jobs import layout

    # the preset's run directory (its prepared toy shards), runs named apart from the preset's own
    name = f"{prefix}{head}-s{seed}"
    overrides = [f"run.name={name}", f"run.seed={seed}", "train_fr.crfiqa=false",
                 "train_fr.num_virtual=0", *extra]
    if head.startswith("gif-"):
        overrides += ["train_fr.head=gif", f"train_fr.codes={codes}",
                      f"train_fr.head_kwargs={{lambdas: {head.split('-', 1)[1]}{', ' + head_kwargs if head_kwargs else ''}}}"]
    cfg = load_config(config, overrides)
    metrics_file = layout.model_dir(cfg, "fr") / "metrics.json"
    t = time.time()
    if not metrics_file.exists():
        JOBS["train_fr"](cfg)
    final = json.loads(metrics_file.read_text())["final"]
    return {"head": head, "seed": seed, "accuracy": float(final[METRIC]), "steps": int(final["step"]),
            "seconds": round(time.time() - t, 1)}


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for head in dict.fromkeys(r["head"] for r in rows):
        acc = [r["accuracy"] for r in rows if r["head"] == head]
        out.append({"head": head, "n": len(acc), "seeds": " ".join(f"{a:.4f}" for a in acc),
                    "mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--prefix", default="gifh-", help="run.name prefix of the runs")
    ap.add_argument("--codes", default="runs/tiny/codes/tiny", help="the build_codes export to use")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--patterns", default="uniform", help="GIF lambda patterns, comma separated")
    ap.add_argument("--no-softmax", action="store_true", help="GIF rows only")
    ap.add_argument("--head-kwargs", default="", help="more GIF head options, e.g. 'margin: train'")
    ap.add_argument("--json", default="bench/results/gif_heads_toy.json")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    a = ap.parse_args(argv)
    codes = Path(a.codes).resolve()
    if not (codes / "codes.json").exists() and not any(codes.glob("*.safetensors")):
        ap.error(f"--codes {codes}: no build_codes export there (run `python -m ray_jobs build_codes` first)")
    heads = ([] if a.no_softmax else ["softmax"]) + [f"gif-{p}" for p in a.patterns.split(",") if p]
    rows = []
    for head in heads:
        for seed in (int(s) for s in a.seeds.split(",")):
            rows.append(run_one(a.config, a.prefix, codes, head, seed, a.overrides, a.head_kwargs))
            print(f"{head} seed {seed}: {rows[-1]['accuracy']:.4f} ({rows[-1]['seconds']} s)", flush=True)
    table = summary(rows)
    f4 = "{:.4f}".format
    print(format_table(table, [("head", "head", str), ("n", "n", str), ("seeds", "per seed", str),
                               ("mean", "mean", f4), ("std", "std", f4)]))
    previous = json.loads(Path(a.json).read_text()).get("rows", []) if Path(a.json).exists() else []
    keep = [r for r in previous if (r["head"], r["seed"]) not in {(x["head"], x["seed"]) for x in rows}]
    all_rows = keep + rows
    write_json(a.json, {"machine": machine_info(), "config": a.config, "overrides": a.overrides,
                        "codes": str(codes), "head_kwargs": a.head_kwargs, "rows": all_rows,
                        "summary": summary(all_rows)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
