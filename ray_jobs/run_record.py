"""A job's settings record: the settings a resumable folder (or Tune experiment) was started with.

A re-run that would continue such a folder with other settings is refused, naming the keys that differ,
so results of one setting are never mixed with (or reported as) those of another.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray_jobs.config import ConfigError


def check_or_write_record(path: Path, record: dict[str, Any], what: str, hint: str) -> None:
    """Write ``record`` (JSON) at ``path``, or raise ConfigError when ``path`` holds another one.

    ``what``: the folder or experiment it guards (for the message); ``hint``: what the user can do instead."""
    record = json.loads(json.dumps(record))  # compare in JSON form (tuples read back as lists)
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        if diff:
            shown = "; ".join(f"{k}: {_short(saved.get(k))} there, {_short(record.get(k))} now" for k in diff[:4])
            raise ConfigError(f"{what} was made with other settings (differs in {diff}: {shown}); {hint}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def _short(value: Any, limit: int = 80) -> str:
    """A value for the message (a plan's per-class list can be thousands of entries)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
