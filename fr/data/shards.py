"""Face shards: Parquet files of aligned faces plus a ``dataset.json`` manifest (the one data format).

Columns: ``image`` (encoded JPEG/PNG bytes of an aligned RGB face), ``label`` (int64, contiguous class
index), ``identity`` (string), ``landmarks`` (10 float32: five (x, y) points in the aligned image),
``source`` (``real`` / ``synthetic``). Shards are written to a temporary name and renamed when complete,
so a reader never sees half a shard and an interrupted job loses at most the shard in flight.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("identity", pa.string()),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("source", pa.string()),
    ]
)
SOURCES = ("real", "synthetic")
SHARD_GLOB = "part-*.parquet"
MANIFEST = "dataset.json"


class ShardError(ValueError):
    """A shard directory, shard file or record is invalid."""


def validate_record(rec: dict, where: str = "record") -> None:
    """Raise ShardError naming the field if ``rec`` does not follow the shard schema."""
    missing = [name for name in SCHEMA.names if name not in rec]
    if missing:
        raise ShardError(f"{where}: missing field(s) {missing}; required: {SCHEMA.names}")
    if not isinstance(rec["image"], (bytes, bytearray)) or len(rec["image"]) == 0:
        raise ShardError(f"{where}: 'image' must be non-empty encoded bytes")
    label = rec["label"]
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or label < 0:
        raise ShardError(f"{where}: 'label' must be a non-negative int, got {label!r}")
    lm = np.asarray(rec["landmarks"], dtype=np.float32).reshape(-1)
    if lm.shape != (10,) or not np.all(np.isfinite(lm)):
        raise ShardError(f"{where}: 'landmarks' must be 10 finite floats, got shape {lm.shape}")
    if rec["source"] not in SOURCES:
        raise ShardError(f"{where}: 'source' must be one of {SOURCES}, got {rec['source']!r}")


def records_to_table(records: list[dict]) -> pa.Table:
    for i, rec in enumerate(records):
        validate_record(rec, f"record {i}")
    return pa.table(
        {
            "image": [bytes(r["image"]) for r in records],
            "label": [int(r["label"]) for r in records],
            "identity": [str(r["identity"]) for r in records],
            "landmarks": [np.asarray(r["landmarks"], dtype=np.float32).reshape(10).tolist() for r in records],
            "source": [r["source"] for r in records],
        },
        schema=SCHEMA,
    )


def shard_path(directory: str | Path, index: int) -> Path:
    return Path(directory) / f"part-{index:05d}.parquet"


def write_shard(path: str | Path, records: list[dict], overwrite: bool = False) -> int:
    """Write one shard atomically (tmp file + rename). Returns the number of rows."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ShardError(f"{path} exists; refusing to overwrite (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = records_to_table(records)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="none")  # JPEG/PNG bytes do not compress further
    os.replace(tmp, path)
    return table.num_rows


def write_shards(directory: str | Path, records: Iterable[dict], rows_per_shard: int = 2000,
                 start_index: int = 0, overwrite: bool = False) -> list[Path]:
    """Stream ``records`` into consecutive shards of ``rows_per_shard`` rows. Returns the written paths."""
    if rows_per_shard <= 0:
        raise ShardError(f"rows_per_shard must be positive, got {rows_per_shard}")
    paths: list[Path] = []
    buf: list[dict] = []
    index = start_index
    for rec in records:
        buf.append(rec)
        if len(buf) == rows_per_shard:
            paths.append(shard_path(directory, index))
            write_shard(paths[-1], buf, overwrite)
            buf, index = [], index + 1
    if buf:
        paths.append(shard_path(directory, index))
        write_shard(paths[-1], buf, overwrite)
    return paths


def list_shards(directory: str | Path) -> list[Path]:
    """Sorted shard files of a dataset directory; ShardError if there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise ShardError(f"shard directory {str(d)!r} does not exist")
    paths = sorted(d.glob(SHARD_GLOB))
    if not paths:
        raise ShardError(f"shard directory {str(d)!r} contains no {SHARD_GLOB} files")
    return paths


def content_fingerprint(directory: str | Path) -> str:
    """SHA-1 over a dataset's manifest bytes and its shards' names and sizes: changes when the dataset is
    regenerated or edited, not when it is copied elsewhere (no paths or times in it)."""
    d = Path(directory)
    h = hashlib.sha1((d / MANIFEST).read_bytes() if (d / MANIFEST).is_file() else b"")
    for p in list_shards(d):
        h.update(f"{p.name}:{p.stat().st_size};".encode())
    return h.hexdigest()


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{path}: not a readable Parquet shard: {exc}") from exc
    expected = columns or SCHEMA.names
    missing = [c for c in expected if c not in table.column_names]
    if missing:
        raise ShardError(f"{path}: missing column(s) {missing}")
    return table


def iter_records(path: str | Path) -> Iterator[dict]:
    """Records of one shard as dicts (landmarks as float32 arrays)."""
    for row in read_table(path).to_pylist():
        row["landmarks"] = np.asarray(row["landmarks"], dtype=np.float32)
        yield row


# --------------------------------------------------------------------------------------------
# dataset.json


@dataclass
class DatasetInfo:
    """The manifest beside the shards."""

    num_classes: int
    num_images: int
    image_size: int
    identities: list[str]  # label -> identity
    provenance: dict[str, Any] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    images_per_class: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = MANIFEST) -> None:
        if self.num_classes != len(self.identities):
            raise ShardError(f"{where}: num_classes {self.num_classes} != {len(self.identities)} identities")
        if self.images_per_class and sum(self.images_per_class) != self.num_images:
            raise ShardError(f"{where}: images_per_class sums to {sum(self.images_per_class)}, "
                             f"num_images is {self.num_images}")


def write_dataset_json(directory: str | Path, info: DatasetInfo) -> Path:
    info.validate()
    path = Path(directory) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=1))
    os.replace(tmp, path)
    return path


def read_dataset_json(directory: str | Path) -> DatasetInfo:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path} not found: not a facesynth dataset directory")
    try:
        data = json.loads(path.read_text())
        info = DatasetInfo(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ShardError(f"{path}: invalid manifest: {exc}") from exc
    info.validate(str(path))
    return info


def summarize_shards(directory: str | Path) -> tuple[int, dict[int, str], np.ndarray]:
    """Scan labels/identities of all shards: (num_images, label->identity, images per label)."""
    label_to_identity: dict[int, str] = {}
    counts: dict[int, int] = {}
    total = 0
    for path in list_shards(directory):
        table = read_table(path, columns=["label", "identity"])
        labels = table.column("label").to_numpy()
        identities = table.column("identity").to_pylist()
        total += len(labels)
        for lab, ident in zip(labels.tolist(), identities):
            prev = label_to_identity.setdefault(lab, ident)
            if prev != ident:
                raise ShardError(f"{path}: label {lab} maps to both {prev!r} and {ident!r}")
            counts[lab] = counts.get(lab, 0) + 1
    num_classes = max(label_to_identity) + 1 if label_to_identity else 0
    per_class = np.zeros(num_classes, dtype=np.int64)
    for lab, c in counts.items():
        per_class[lab] = c
    return total, label_to_identity, per_class


def real_image_count(directory: str | Path) -> int:
    """Images whose ``source`` is ``real`` in a dataset's shards (reads the source column only)."""
    return sum(sum(1 for s in read_table(path, columns=["source"]).column("source").to_pylist() if s == "real")
               for path in list_shards(directory))


def check_labels(directory: str | Path, num_classes: int) -> None:
    """ShardError naming the shard if any label is outside [0, num_classes) (read: the label column only)."""
    for path in list_shards(directory):
        labels = read_table(path, columns=["label"]).column("label").to_numpy()
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise ShardError(f"{path}: label {int(bad[0])} outside the class range [0, {num_classes}) "
                             f"of {Path(directory) / MANIFEST}")


def build_dataset_info(directory: str | Path, image_size: int, provenance: dict[str, Any],
                       extra: dict[str, Any] | None = None) -> DatasetInfo:
    """Manifest from the shards on disk; ShardError if labels are not contiguous 0..C-1."""
    total, l2i, per_class = summarize_shards(directory)
    empty = np.flatnonzero(per_class == 0)
    if len(empty):
        raise ShardError(f"{directory}: labels are not contiguous; no images for label(s) {empty[:10].tolist()}")
    return DatasetInfo(
        num_classes=len(per_class),
        num_images=total,
        image_size=image_size,
        identities=[l2i[i] for i in range(len(per_class))],
        provenance=provenance,
        shards=[p.name for p in list_shards(directory)],
        images_per_class=per_class.tolist(),
        extra=extra or {},
    )
