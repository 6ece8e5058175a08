"""Embeddings of face datasets with an evaluator FR model through Ray Data (shared by ``evaluate`` and the
privacy check): shards decoded by CPU tasks, embedded by an actor pool that loads the evaluator once,
cached beside each dataset (``evaluation.embedding_cache``)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from evaluation.embed import Embeddings, Evaluator, check_evaluator_fits, iter_shard_faces, load_evaluator, read_columns, shard_num_rows
from evaluation.embedding_cache import evaluator_key, load_or_compute
from evaluation.evaluated_set import EvaluatedSet, check_classes, open_dataset
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig

log = logging.getLogger(__name__)
FLIP = True  # flip test for evaluator embeddings (a candidate config key: evaluate.flip)


@dataclass(frozen=True)
class EvaluatorFiles:
    """Where the evaluator lives, and the cache key of its embeddings."""

    backbone: Path  # prefix of <prefix>.safetensors + <prefix>.json
    quality: Path | None
    prototypes: Path | None  # prefix of a prototype file pair beside the backbone, if any
    flip: bool
    key: str


def evaluator_files(cfg: FacesynthConfig) -> EvaluatorFiles:
    """Resolve ``evaluate.evaluator`` / ``evaluator_quality`` (defaults: the train_fr export)."""
    e = cfg.evaluate
    backbone = Path(e.evaluator) if e.evaluator else layout.fr_backbone_prefix(cfg)
    if backbone.suffix in (".safetensors", ".json"):
        backbone = backbone.with_suffix("")
    for suffix in (".safetensors", ".json"):
        if not Path(str(backbone) + suffix).is_file():
            raise FileNotFoundError(f"evaluate.evaluator: {backbone}{suffix} not found (an FR backbone prefix, "
                                    f"e.g. <output_dir>/fr/<run>/backbone)")
    if e.evaluator_quality:
        quality: Path | None = Path(e.evaluator_quality)
        if not quality.is_file():
            raise FileNotFoundError(f"evaluate.evaluator_quality: {quality} not found")
    else:
        beside = backbone.parent / "quality.safetensors"
        quality = beside if beside.is_file() else None
    protos = backbone.parent / "prototypes"
    has_protos = Path(str(protos) + ".safetensors").is_file() and Path(str(protos) + ".json").is_file()
    return EvaluatorFiles(backbone, quality, protos if has_protos else None, FLIP,
                          evaluator_key(backbone, quality, FLIP))


def _read_shard(batch: dict[str, np.ndarray], rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Shard items -> decoded faces in batches of ``rows_per_batch``, with labels and (shard id, row) ids."""
    for shard, path, size in zip(batch["shard"], batch["path"], batch["image_size"]):
        for start, faces, labels in iter_shard_faces(str(path), int(size), rows_per_batch):
            n = len(labels)
            yield {"shard": np.full(n, int(shard), np.int64), "row": np.arange(start, start + n, dtype=np.int64),
                   "label": labels, "image": faces}


class EmbedActor:
    """Ray Data actor: loads the evaluator once, embeds batches of decoded faces."""

    def __init__(self, backbone: str, quality: str | None, flip: bool, use_gpu: bool, threads: int):
        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.evaluator = load_evaluator(backbone, quality, flip, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb, fiqa = self.evaluator.embed(batch["image"])
        out = {"shard": batch["shard"], "row": batch["row"], "label": batch["label"], "embedding": emb}
        if fiqa is not None:
            out["fiqa"] = fiqa
        return out


def embed_shards_on_ray(cfg: FacesynthConfig, files: EvaluatorFiles, shards: list[Path],
                        image_sizes: dict[Path, int]) -> dict[Path, Embeddings]:
    """Embeddings of whole shards via Ray Data; rows are put back in order by their (shard, row) ids."""
    e = cfg.evaluate
    out: dict[Path, Embeddings] = {}
    for size in sorted({image_sizes[p.parent] for p in shards}):  # one pipeline per image size
        group = [p for p in shards if image_sizes[p.parent] == size]
        items = [{"shard": i, "path": str(p), "image_size": size} for i, p in enumerate(group)]
        remote = {"num_gpus": e.gpus_per_actor} if e.gpus_per_actor > 0 else {}
        ds = (ray.data.from_items(items, override_num_blocks=len(items))
              .map_batches(_read_shard, batch_size=1, num_cpus=cfg.ray.task_cpus, batch_format="numpy",
                           fn_kwargs={"rows_per_batch": e.batch_size})
              .map_batches(EmbedActor, batch_size=e.batch_size, batch_format="numpy",
                           compute=ray.data.ActorPoolStrategy(size=e.num_actors), num_cpus=e.cpus_per_actor,
                           fn_constructor_kwargs={"backbone": str(files.backbone),
                                                  "quality": str(files.quality) if files.quality else None,
                                                  "flip": files.flip, "use_gpu": e.gpus_per_actor > 0,
                                                  "threads": max(1, int(e.cpus_per_actor))},
                           **remote))
        n_rows = [shard_num_rows(p) for p in group]
        cols: list[dict[str, np.ndarray]] = [{} for _ in group]
        filled = [np.zeros(n, bool) for n in n_rows]
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for s in np.unique(batch["shard"]):
                m = batch["shard"] == s
                rows = batch["row"][m]
                for key in ("label", "embedding", "fiqa"):
                    if key in batch:
                        value = batch[key][m]
                        if key not in cols[s]:
                            cols[s][key] = np.zeros((n_rows[s], *value.shape[1:]), value.dtype)
                        cols[s][key][rows] = value
                filled[s][rows] = True
        for i, p in enumerate(group):
            if not filled[i].all():
                raise RuntimeError(f"{p}: {int((~filled[i]).sum())} rows came back without embeddings")
            out[p] = Embeddings(cols[i]["embedding"].astype(np.float32), cols[i]["label"].astype(np.int64),
                                cols[i].get("fiqa"))
    return out


def load_sets(cfg: FacesynthConfig, files: EvaluatorFiles, evaluator: Evaluator, named: dict[str, tuple[Path, str]]
              ) -> tuple[dict[str, EvaluatedSet], dict]:
    """Open and check datasets ``{name: (path, setting)}``, then embed them (cache first, then one Ray pipeline)."""
    infos, columns = {}, {}
    for name, (path, what) in named.items():
        infos[name] = open_dataset(path, what)
        check_evaluator_fits(evaluator, infos[name].image_size, where=f"{what} {path}")
        columns[name] = read_columns(path)
        check_classes(columns[name][0], infos[name], f"{what} {path}")
    sizes = {path: infos[name].image_size for name, (path, _) in named.items()}
    init_ray(cfg.ray)
    rows, stats = load_or_compute([p for p, _ in named.values()], files.key,
                                  lambda shards: embed_shards_on_ray(cfg, files, shards, sizes),
                                  enabled=cfg.evaluate.cache_embeddings)
    sets = {}
    for name, (path, _) in named.items():
        labels, synthetic = columns[name]
        if not np.array_equal(labels, rows[path].labels):
            raise RuntimeError(f"{path}: embedded labels differ from the shards'; delete {path}.embeddings")
        sets[name] = EvaluatedSet(name, path, infos[name], rows[path], synthetic)
    cache = {"cached_shards": stats.cached, "computed_shards": stats.computed}
    log.info("embeddings: %s", cache)
    return sets, cache
