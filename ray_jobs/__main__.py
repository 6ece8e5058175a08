"""``python -m ray_jobs <job> --config configs/<preset>.yaml [key=value ...]``."""
from __future__ import annotations

import argparse
import logging
import sys

from ray_jobs.config import ConfigError, load_config
from ray_jobs.jobs import JOBS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs", description="facesynth jobs on Ray")
    parser.add_argument("job", choices=sorted(JOBS), help="which job to run")
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml); defaults if omitted")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. prepare.toy.num_identities=100")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    JOBS[args.job](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
