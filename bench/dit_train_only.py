"""The DiT training step alone over many steps (``before_after.py --bench dit_train``).

    PYTHONPATH=<checkout> python bench/dit_train_only.py --out out.json [--steps 40] [--batch 16] [--size tiny]

``bench/dit_throughput.py`` times 3 training steps per run on the CPU, too few to see a 2 % difference through
this VM's +-20 % run-to-run spread. This script calls ``bench.dit_throughput.train_throughput`` of the checkout
on ``PYTHONPATH`` (its own ``bench`` package, so the old and the new code each time their own step) with
``--steps`` timed steps, and writes ``{"rows": [{"what": "train step", "images_per_s": ...}]}``.
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args()
    from bench.dit_throughput import train_throughput  # the checkout's, from PYTHONPATH

    row = train_throughput(args.size, args.batch, args.steps, torch.device("cpu"))
    with open(args.out, "w") as f:
        json.dump({"rows": [{"what": "train step", "images_per_s": row["images_per_s"]}]}, f)


if __name__ == "__main__":
    main()
