"""A benchmark run in two checkouts side by side: the same script, before and after a change.

    python bench/before_after.py --before /path/to/old/checkout [--after .] --bench fr|dit [--repeats 2]
                                 [-- extra arguments for the bench]

``fr`` runs ``bench/fr_train_throughput.py --order bare`` (the FR training step of each checkout in a
plain process) and reads its median images/s; ``dit`` runs ``bench/dit_throughput.py --sizes tiny`` and
reads the training step's images/s. Runs alternate before/after/after/before... so that drift of a
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
    "fr": (["bench/fr_train_throughput.py", "--order", "bare"], lambda r: r["median_images_per_s"]["bare"]),
    "dit": (["bench/dit_throughput.py", "--sizes", "tiny"],
            lambda r: next(row["images_per_s"] for row in r["rows"] if row["what"] == "train step")),
}


def run_once(checkout: Path, bench: str, extra: list[str]) -> float:
    script, metric = BENCHES[bench]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, *script, "--out", str(out), *extra]
        subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(checkout)})
        return float(metric(json.loads(out.read_text())))


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
        value = run_once(sides[side], args.bench, args.extra)
        runs.append({"side": side, "images_per_s": value, "wall_s": time.perf_counter() - t0,
                     "loadavg_1m": os.getloadavg()[0]})
        print(f"{side}: {value:.4g} img/s", flush=True)
    medians = {s: statistics.median(r["images_per_s"] for r in runs if r["side"] == s) for s in sides}
    ratio = medians["after"] / medians["before"]
    table = format_table(runs, [("side", "side", str), ("images_per_s", "img/s", "{:.4g}".format),
                                ("wall_s", "wall s", "{:.0f}".format), ("loadavg_1m", "load 1m", "{:.2f}".format)])
    print(f"\n{args.bench}: before {sides['before']} vs after {sides['after']}\n{table}\n"
          f"median img/s before {medians['before']:.4g}, after {medians['after']:.4g}: after/before = {ratio:.3f}")
    out = args.out or str(REPO_ROOT / f"bench/results/before_after_{args.bench}.json")
    write_json(out, {"benchmark": "before_after", "bench": args.bench, "sides": {k: str(v) for k, v in sides.items()},
                     "extra": args.extra, "runs": runs, "median_images_per_s": medians, "after_over_before": ratio,
                     "machine": machine_info("cpu")})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
