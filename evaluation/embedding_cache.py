"""Embeddings cached as Parquet shards beside a dataset, reused until the evaluator or the data change.

Layout: ``<dataset_dir>.embeddings/<key>/<shard name>`` holds the embeddings of dataset shard
``<dataset_dir>/<shard name>``, row for row (columns ``label`` int64, ``embedding`` float32 list of
d, optional ``fiqa`` float32). The key is a hash of the evaluator's files (backbone weights and
config, quality head) and the flip flag, so another evaluator never reads these rows. Each cache
shard records the fingerprint (name, size, mtime) of the dataset shard it came from; a dataset shard
that was rewritten, or is new, is embedded again, the others are read back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.embed import Embeddings
from fr.data.shards import list_shards

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".embeddings"
CACHE_FORMAT = 1  # bump when the cached columns change meaning
_META_KEY = b"facesynth_embedding_cache"

ComputeFn = Callable[[list[Path]], dict[Path, Embeddings]]


def file_digest(path: str | Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def evaluator_key(backbone_prefix: str | Path, quality_path: str | Path | None, flip: bool) -> str:
    """Cache key: a hash of the evaluator's weights + config (+ quality head) file contents and the flip flag."""
    prefix = str(backbone_prefix)
    for suffix in (".safetensors", ".json"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    files = [Path(prefix + ".safetensors"), Path(prefix + ".json")] + ([Path(quality_path)] if quality_path else [])
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"evaluator file {f} not found")
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "flip": bool(flip)}).encode())
    for f in files:
        h.update(file_digest(f).encode())
    return h.hexdigest()[:20]


def shard_fingerprint(path: str | Path) -> dict:
    """What identifies a dataset shard's content cheaply: name, size and modification time (ns)."""
    st = Path(path).stat()
    return {"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def dataset_fingerprint(directory: str | Path) -> str:
    """SHA-1 over the fingerprints of all shards of a dataset (changes when any shard does)."""
    text = json.dumps([shard_fingerprint(p) for p in list_shards(directory)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class CacheStats:
    """Per dataset: shards read from the cache and shards embedded in this call."""

    cached: dict[str, int] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)


class EmbeddingCache:
    """The cache folder of one (dataset, evaluator key) pair."""

    def __init__(self, dataset_dir: str | Path, key: str, root: str | Path | None = None):
        self.dataset_dir = Path(dataset_dir)
        base = Path(root) / self.dataset_dir.resolve().name if root else Path(str(self.dataset_dir) + CACHE_SUFFIX)
        self.directory = base / key
        self.key = key

    def path_for(self, shard: str | Path) -> Path:
        return self.directory / Path(shard).name

    def load(self, shard: str | Path) -> Embeddings | None:
        """Cached rows of a dataset shard, or None when absent, unreadable or stale."""
        path = self.path_for(shard)
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        except (OSError, pa.ArrowInvalid, json.JSONDecodeError):
            return None
        if meta.get("key") != self.key or meta.get("source") != shard_fingerprint(shard):
            return None
        d = int(meta["dim"])
        emb = table.column("embedding").combine_chunks().flatten().to_numpy().astype(np.float32).reshape(-1, d)
        fiqa = table.column("fiqa").to_numpy().astype(np.float32) if "fiqa" in table.column_names else None
        return Embeddings(emb, table.column("label").to_numpy().astype(np.int64), fiqa)

    def save(self, shard: str | Path, rows: Embeddings) -> Path:
        """Write the rows of ``shard`` atomically (tmp file + rename); returns the cache file."""
        emb = np.ascontiguousarray(rows.embeddings, dtype=np.float32)
        columns = {
            "label": pa.array(rows.labels.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
        }
        if rows.fiqa is not None:
            columns["fiqa"] = pa.array(rows.fiqa.astype(np.float32))
        meta = {"key": self.key, "dim": emb.shape[1], "source": shard_fingerprint(shard), "format": CACHE_FORMAT}
        table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        path = self.path_for(shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def load_or_compute(dataset_dirs: Sequence[str | Path], key: str, compute: ComputeFn, enabled: bool = True,
                    root: str | Path | None = None) -> tuple[dict[Path, Embeddings], CacheStats]:
    """Embeddings of every dataset (rows in shard order), from the cache where valid.

    ``compute`` gets the dataset shards that need embedding (of all datasets at once, so one actor
    pool serves them all) and returns their rows keyed by shard path. With ``enabled=False`` the
    cache is neither read nor written; a cache that cannot be written (read-only folder) is skipped
    with a warning.
    """
    caches = {Path(d): EmbeddingCache(d, key, root) for d in dataset_dirs}
    shards = {d: list_shards(d) for d in caches}
    parts: dict[Path, Embeddings] = {}
    missing: list[Path] = []
    stats = CacheStats()
    for d, cache in caches.items():
        for p in shards[d]:
            hit = cache.load(p) if enabled else None
            if hit is None:
                missing.append(p)
            else:
                parts[p] = hit
        stats.cached[str(d)] = len(shards[d]) - sum(p.parent == d for p in missing)
        stats.computed[str(d)] = sum(p.parent == d for p in missing)
    if missing:
        fresh = compute(missing)
        lost = [str(p) for p in missing if p not in fresh]
        if lost:
            raise RuntimeError(f"embedding produced no rows for shards {lost[:5]}")
        for p in missing:
            if enabled:
                try:
                    caches[p.parent].save(p, fresh[p])
                except OSError as exc:  # e.g. a read-only dataset folder: the cache is an optimisation
                    log.warning("embedding cache not written for %s: %s", p, exc)
            parts[p] = fresh[p]
    return {d: Embeddings.concat([parts[p] for p in shards[d]]) for d in caches}, stats
