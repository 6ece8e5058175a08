"""Embeddings of face datasets with an evaluator FR model (shared by ``evaluate`` and the privacy check),
cached beside each dataset (``evaluation.embedding_cache``). The shards still to embed go either through
Ray Data (an actor pool that loads the evaluator once, one shard per call) or, when Ray is local and the
work is small, through one instance of the same callable in this process (``ray_jobs.local_path``);
both give identical rows."""
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
from ray_jobs.errors import MissingInputError
from ray_jobs.local_path import choose_path, torch_threads
from ray_jobs.progress import ProgressLine

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0  # at most one progress line this often (and one at the end)
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
    """Resolve ``evaluate.evaluator`` / ``evaluator_quality`` (defaults: the train_evaluator export)."""
    e = cfg.evaluate
    backbone = layout.evaluator_prefix(cfg)  # evaluate.evaluator, else the train_evaluator export
    if backbone.suffix in (".safetensors", ".json"):
        backbone = backbone.with_suffix("")
    for suffix in (".safetensors", ".json"):
        if not Path(str(backbone) + suffix).is_file():
            raise MissingInputError(f"evaluate.evaluator: {backbone}{suffix} not found (an FR backbone prefix, "
                                    f"e.g. <output_dir>/fr/<run>/backbone; the default is made by `python -m ray_jobs train_evaluator`)")
    if e.evaluator_quality:
        quality: Path | None = Path(e.evaluator_quality)
        if not quality.is_file():
            raise MissingInputError(f"evaluate.evaluator_quality: {quality} not found")
    else:
        beside = backbone.parent / "quality.safetensors"
        quality = beside if beside.is_file() else None
    protos = backbone.parent / "prototypes"
    has_protos = Path(str(protos) + ".safetensors").is_file() and Path(str(protos) + ".json").is_file()
    return EvaluatorFiles(backbone, quality, protos if has_protos else None, FLIP,
                          evaluator_key(backbone, quality, FLIP))


class EmbedActor:
    """The per-shard callable of both paths: loads the evaluator once, embeds whole shards.

    Each shard is read and embedded in batches of ``batch_rows`` consecutive rows (the batches of
    ``evaluation.embed.embed_shards``), so a shard's embeddings do not depend on which path, actor or
    neighbouring shard it ran with. In Ray Data it is an actor; in the driver, one instance
    (``ray_jobs.local_path``). Input columns: ``shard`` (an id), ``path``, ``image_size``, ``batch_rows``.
    """

    def __init__(self, backbone: str, quality: str | None, flip: bool, use_gpu: bool, threads: int):
        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.evaluator = load_evaluator(backbone, quality, flip, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for shard, path, size, rows in zip(batch["shard"], batch["path"], batch["image_size"], batch["batch_rows"]):
            for start, faces, labels in iter_shard_faces(str(path), int(size), int(rows)):
                emb, fiqa = self.evaluator.embed(faces)
                n = len(labels)
                part = {"shard": np.full(n, int(shard), np.int64), "row": np.arange(start, start + n, dtype=np.int64),
                        "label": labels, "embedding": emb}
                if fiqa is not None:
                    part["fiqa"] = fiqa
                parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _actor_kwargs(cfg: FacesynthConfig, files: EvaluatorFiles) -> dict:
    e = cfg.evaluate
    return {"backbone": str(files.backbone), "quality": str(files.quality) if files.quality else None,
            "flip": files.flip, "use_gpu": e.gpus_per_actor > 0, "threads": max(1, int(e.cpus_per_actor))}


def _shard_items(cfg: FacesynthConfig, shards: list[Path], image_sizes: dict[Path, int]) -> list[dict]:
    return [{"shard": i, "path": str(p), "image_size": image_sizes[p.parent], "batch_rows": cfg.evaluate.batch_size}
            for i, p in enumerate(shards)]


def _assemble(batches: Iterator[dict[str, np.ndarray]], shards: list[Path]) -> dict[Path, Embeddings]:
    """Rows back into shard order by their (shard, row) ids; progress lines as shards come back."""
    n_rows = [shard_num_rows(p) for p in shards]
    cols: list[dict[str, np.ndarray]] = [{} for _ in shards]
    filled = [np.zeros(n, bool) for n in n_rows]
    progress = ProgressLine("embedding", sum(n_rows), "rows", every_s=PROGRESS_EVERY_S)
    done = 0
    for batch in batches:
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
            done += len(rows)
        if progress.due(done):
            log.info(progress(done, f"{progress.rate(done):.0f} img/s"))
    out = {}
    for i, p in enumerate(shards):
        if not filled[i].all():
            raise RuntimeError(f"{p}: {int((~filled[i]).sum())} rows came back without embeddings")
        out[p] = Embeddings(cols[i]["embedding"].astype(np.float32), cols[i]["label"].astype(np.int64),
                            cols[i].get("fiqa"))
    return out


def embed_shards_in_process(cfg: FacesynthConfig, files: EvaluatorFiles, shards: list[Path],
                            image_sizes: dict[Path, int]) -> dict[Path, Embeddings]:
    """The local fast path: one :class:`EmbedActor` in this process, the shards in order."""
    with torch_threads():
        actor = EmbedActor(**_actor_kwargs(cfg, files))
        items = _shard_items(cfg, shards, image_sizes)
        return _assemble((actor({k: np.asarray([v]) for k, v in item.items()}) for item in items), shards)


def embed_shards_on_ray(cfg: FacesynthConfig, files: EvaluatorFiles, shards: list[Path],
                        image_sizes: dict[Path, int]) -> dict[Path, Embeddings]:
    """Embeddings of whole shards via Ray Data: one shard per call of an :class:`EmbedActor` in the pool."""
    e = cfg.evaluate
    remote = {"num_gpus": e.gpus_per_actor} if e.gpus_per_actor > 0 else {}
    items = _shard_items(cfg, shards, image_sizes)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        EmbedActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=e.num_actors),
        num_cpus=e.cpus_per_actor, fn_constructor_kwargs=_actor_kwargs(cfg, files), **remote)
    return _assemble(ds.iter_batches(batch_size=None, batch_format="numpy"), shards)


def embed_on_chosen_path(cfg: FacesynthConfig, files: EvaluatorFiles, shards: list[Path],
                 image_sizes: dict[Path, int]) -> dict[Path, Embeddings]:
    """Embeddings of ``shards`` on the path ``ray_jobs.local_path.choose_path`` picks (Ray started only for Ray Data)."""
    rows = sum(shard_num_rows(p) for p in shards)
    choice = choose_path(cfg.ray, "embedding", rows, cfg.evaluate.num_actors)
    log.info("embedding: %d rows of %d shards %s (%s)", rows, len(shards), choice.name, choice.reason)
    if choice.in_process:
        return embed_shards_in_process(cfg, files, shards, image_sizes)
    init_ray(cfg.ray)
    return embed_shards_on_ray(cfg, files, shards, image_sizes)


def load_sets(cfg: FacesynthConfig, files: EvaluatorFiles, evaluator: Evaluator, named: dict[str, tuple[Path, str]]
              ) -> tuple[dict[str, EvaluatedSet], dict]:
    """Open and check datasets ``{name: (path, setting)}``, then embed them (cache first, then :func:`embed_on_chosen_path`)."""
    infos, columns = {}, {}
    for name, (path, what) in named.items():
        infos[name] = open_dataset(path, what)
        check_evaluator_fits(evaluator, infos[name].image_size, where=f"{what} {path}")
        columns[name] = read_columns(path)
        check_classes(columns[name][0], infos[name], f"{what} {path}")
    sizes = {path: infos[name].image_size for name, (path, _) in named.items()}
    rows, stats = load_or_compute([p for p, _ in named.values()], files.key,
                                  lambda shards: embed_on_chosen_path(cfg, files, shards, sizes),
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
