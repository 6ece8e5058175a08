"""A benchmark run in two checkouts side by side: the same script, before and after a change.

    python bench/before_after.py --before /path/to/old/checkout [--after .] --bench fr|dit [--repeats 2]
                                 [-- extra arguments for the bench]

``fr`` runs ``bench/fr_train_throughput.py --order bare,ray`` (the FR training step of each checkout in a
plain process and in a Ray Train worker) and reads both median images/s; ``dit`` runs
``bench/dit_throughput.py --sizes tiny`` and reads the training step's and the sampler's images/s; ``dit_train``
times only the DiT training step, over more steps (``bench/dit_train_only.py``; ``-- --steps N``). Runs alternate before/after/after/before... so that drift of a
shared machine falls on both sides; each side's figure is the median of its runs, and the ratio is
after / before. Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, format_table, machine_info, write_json  # noqa: E402

BENCHES = {
    "fr": (["bench/fr_train_throughput.py", "--order", "bare,ray"],
           lambda r: {"step": r["median_images_per_s"]["bare"], "step in Ray Train": r["median_images_per_s"]["ray"]}),
    "dit": (["bench/dit_throughput.py", "--sizes", "tiny"],
            lambda r: {row["what"]: row["images_per_s"] for row in r["rows"]}),
    # the DiT step alone over --steps (default 40) timed steps: this checkout's runner imports each side's
    # bench.dit_throughput (bench/dit_train_only.py), so the old checkout needs no new file
    "dit_train": ([str(REPO_ROOT / "bench/dit_train_only.py")],
                  lambda r: {row["what"]: row["images_per_s"] for row in r["rows"]}),
}


def run_once(checkout: Path, bench: str, extra: list[str]) -> dict[str, float]:
    script, metric = BENCHES[bench]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, *script, "--out", str(out), *extra]
        subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(checkout)})
        return {k: float(v) for k, v in metric(json.loads(out.read_text())).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="checkout of the code before the change")
    ap.add_argument("--after", default=str(REPO_ROOT), help="checkout of the code after the change")
    ap.add_argument("--bench", choices=sorted(BENCHES), required=True)
    ap.add_argument("--repeats", type=int, default=2, help="runs per side (alternating)")
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*", help="arguments for the bench script (after --)")
    args = ap.parse_args()
    sides = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for name, path in sides.items():
        if not (path / BENCHES[args.bench][0][0]).is_file():
            raise FileNotFoundError(f"--{name}: {path} has no {BENCHES[args.bench][0][0]}")
    order = (["before", "after", "after", "before"] * args.repeats)[: 2 * args.repeats]
    runs = []
    for side in order:
        t0 = time.perf_counter()
        values = run_once(sides[side], args.bench, args.extra)
        runs.append({"side": side, **values, "wall_s": time.perf_counter() - t0, "loadavg_1m": os.getloadavg()[0]})
        print(f"{side}: " + ", ".join(f"{k} {v:.4g} img/s" for k, v in values.items()), flush=True)
    keys = list(values)
    medians = {s: {k: statistics.median(r[k] for r in runs if r["side"] == s) for k in keys} for s in sides}
    ratios = {k: medians["after"][k] / medians["before"][k] for k in keys}
    table = format_table(runs, [("side", "side", str), *((k, f"{k} img/s", "{:.4g}".format) for k in keys),
                                ("wall_s", "wall s", "{:.0f}".format), ("loadavg_1m", "load 1m", "{:.2f}".format)])
    print(f"\n{args.bench}: before {sides['before']} vs after {sides['after']}\n{table}")
    for k in keys:
        print(f"{k}: median img/s before {medians['before'][k]:.4g}, after {medians['after'][k]:.4g}: "
              f"after/before = {ratios[k]:.3f}")
    out = args.out or str(REPO_ROOT / f"bench/results/before_after_{args.bench}.json")
    write_json(out, {"benchmark": "before_after", "bench": args.bench, "sides": {k: str(v) for k, v in sides.items()},
                     "extra": args.extra, "runs": runs, "median_images_per_s": medians, "after_over_before": ratios,
                     "machine": machine_info("cpu")})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
