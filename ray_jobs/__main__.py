"""``python -m ray_jobs <job> --config configs/<preset>.yaml [key=value ...] [--debug]``.

Bad input (a config error, or an input check of the job before its work starts: ``ray_jobs.errors``)
prints one line ``error: ...`` and exits with 2; ``--debug`` (or ``FACESYNTH_DEBUG=1``) shows the
traceback instead. Other failures keep their traceback and exit with 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ray_jobs.config import load_config
from ray_jobs.errors import DEBUG_ENV, EXIT_INPUT_ERROR, debug_enabled, is_input_error, one_line
from ray_jobs.jobs import JOBS

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs", description="facesynth jobs on Ray")
    parser.add_argument("job", choices=sorted(JOBS), help="which job to run")
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml); defaults if omitted")
    parser.add_argument("--debug", action="store_true",
                        help=f"tracebacks for input errors and Ray Train's own INFO logs (also {DEBUG_ENV}=1)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. prepare.toy.num_identities=100")
    args = parser.parse_intermixed_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # inherited by a local Ray's workers (ray_jobs.train_common reads it there)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    try:
        JOBS[args.job](load_config(args.config, args.overrides))
    except Exception as exc:
        if not is_input_error(exc) or debug_enabled():
            raise
        print(one_line(exc), file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
