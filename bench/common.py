"""Shared helpers for the bench scripts: machine description, plain-text tables, JSON results."""
from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
MIB = 1024**2


def cpu_model() -> str:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_bytes(key: str) -> int:
    """A ``/proc/meminfo`` entry (e.g. ``MemAvailable``) in bytes; ``ValueError`` if it is missing."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0]) * 1024  # the file lists kB
    raise ValueError(f"/proc/meminfo has no entry {key!r}")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, memory, load, Python/torch versions and the accelerator name for ``device``."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_gib": round(meminfo_bytes("MemTotal") / GIB, 1),
        "mem_available_gib": round(meminfo_bytes("MemAvailable") / GIB, 1),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


Column = tuple[str, str, Callable[[Any], str]]  # (row key, header, formatter)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Left-aligned first column, right-aligned others; missing values print as ``-``."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([fmt(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {key}")


def machine_busy_cpu_s() -> float:
    """CPU seconds all processes on the machine have spent busy (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
