"""Merge face-shard datasets into one training set, relabelled by identity name.

Real-ID augmentation images carry the real identity's name, so they join that identity's class;
virtual identities (``virtual_<i>``) become new classes. Used for VIGFace's real + synthetic mixes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from fr.data.shards import (MANIFEST, DatasetInfo, ShardError, build_dataset_info, content_fingerprint, iter_records,
                            list_shards, read_dataset_json, write_dataset_json, write_shards)


def _records(directories: list[Path], mapping: dict[str, int]) -> Iterator[dict]:
    for directory in directories:
        for path in list_shards(directory):
            for rec in iter_records(path):
                rec["label"] = mapping.setdefault(rec["identity"], len(mapping))
                yield rec


def merge_datasets(directories: list[str | Path], out_dir: str | Path, rows_per_shard: int = 2000,
                   provenance: dict[str, Any] | None = None) -> DatasetInfo:
    """Write the union of ``directories`` to ``out_dir`` (labels by identity, in order of first appearance).

    A finished merge (``dataset.json`` present) of the same inputs is returned as it is; one whose inputs
    changed since (their ``content_fingerprint`` is recorded in the provenance) and a partial one are errors
    rather than being silently reused or overwritten.
    """
    dirs = [Path(d) for d in directories]
    if not dirs:
        raise ValueError("merge_datasets: no input directories")
    sizes = {read_dataset_json(d).image_size for d in dirs}  # also checks every input is a dataset
    if len(sizes) != 1:
        raise ShardError(f"merge_datasets: inputs have different image sizes {sorted(sizes)}: {dirs}")
    out = Path(out_dir)
    fingerprints = [content_fingerprint(d) for d in dirs]
    if (out / MANIFEST).exists():
        info = read_dataset_json(out)
        recorded = info.provenance.get("input_fingerprints")
        if recorded is not None and recorded != fingerprints:
            changed = [str(d) for d, a, b in zip(dirs, fingerprints, recorded) if a != b] or [str(d) for d in dirs]
            raise ShardError(f"{out} merges an earlier version of {changed} (regenerated since): remove {out} "
                             f"to merge the current one")
        return info
    if out.exists() and any(out.glob("part-*.parquet")):
        raise ShardError(f"{out} holds shards of an unfinished merge; remove it to merge again")
    write_shards(out, _records(dirs, {}), rows_per_shard)
    info = build_dataset_info(out, sizes.pop(), {"source": "merge", "inputs": [str(d) for d in dirs],
                                                  "input_fingerprints": fingerprints, **(provenance or {})})
    write_dataset_json(out, info)
    return info
