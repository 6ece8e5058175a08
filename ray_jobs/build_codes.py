"""``build_codes``: GIF identity codes for a dataset (features -> homogenise -> hierarchical codes).

The per-identity features come from one Ray task per shard (``fr.gif.code_vectors.shard_class_sums``:
class-mean thumbnails for ``gif.source=pixels``, class-mean embeddings of an FR model for ``embedder``;
``gif.gpus_per_task`` gives those tasks a GPU share) or from a user file (``file``: no pass over the shards).
The homogenisation runs in the driver on ``gif.device`` (``auto``: the GPU when there is one); its memory per
step does not depend on the number of identities. Output: ``<output_dir>/codes/<run.name>/`` (the code book;
``train_fr.codes`` points here). MLflow: the objective before/after, spread and order statistics, collisions
resolved by the balancing, code-length stats, the spread figure.

``gif_collapse`` measures minority collapse of a trained backbone on the training set (``evaluation.minority_collapse``).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import ray

from fr.data.shards import list_shards, read_dataset_json
from fr.gif.code_vectors import (add_sums, embedder_featuriser, file_code_vectors, pca_vectors, pixel_featuriser,
                                 shard_class_sums, unit_class_means)
from fr.gif.codebook import flat_summary, make_codebook
from fr.gif.homogenise import HomogeniseConfig
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig
from ray_jobs.tracking import mlflow_run

log = logging.getLogger(__name__)
SOURCES = ("pixels", "embedder", "file")


def codes_dataset_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.gif.dataset) if cfg.gif.dataset else layout.real_dataset_dir(cfg)


def _class_sums(path: str, num_classes: int, image_size: int, source: str, options: dict):
    if source == "pixels":
        featurise = pixel_featuriser(options["pixel_size"])
    else:
        import torch

        from fr.face_embedder import load_face_embedder

        device = "cuda" if torch.cuda.is_available() and options["gpus"] > 0 else "cpu"
        embedder = load_face_embedder(options["embedder"], flip=options["flip"], device=device,
                                      arch=options["arch"] or None)
        featurise = embedder_featuriser(embedder)
    return shard_class_sums(path, num_classes, image_size, featurise, options["batch_rows"])


_class_sums_task = ray.remote(_class_sums)


def embedder_prefix(cfg: FacesynthConfig) -> str:
    """``gif.embedder``, or (empty) this run's stage-1 ``train_fr`` export; a clear error when neither exists."""
    if cfg.gif.embedder:
        return cfg.gif.embedder
    prefix = layout.fr_backbone_prefix(cfg)
    if not prefix.with_suffix(".json").is_file():
        raise ValueError(f"gif.source=embedder: gif.embedder is empty and there is no stage-1 export at {prefix} "
                         "(run train_fr first, or name a backbone export prefix or an insightface .pth)")
    return str(prefix.resolve())


def _shard_pass(cfg: FacesynthConfig, data: Path, info, tracker) -> tuple[np.ndarray, np.ndarray, int]:
    g = cfg.gif
    options = {"pixel_size": g.pixel_size, "embedder": embedder_prefix(cfg) if g.source == "embedder" else "", "flip": g.embedder_flip, "arch": g.embedder_arch,
               "batch_rows": g.batch_rows, "gpus": g.gpus_per_task}
    shards = list_shards(data)
    if g.local_pass:  # gif.local_pass: the same per-shard function in this process
        parts = []
        for p in shards:
            parts.append(_class_sums(str(p), info.num_classes, info.image_size, g.source, options))
            log.info("build_codes: %d/%d shards featurised (local)", len(parts), len(shards))
        return add_sums(parts)
    init_ray(cfg.ray)
    task = _class_sums_task.options(num_cpus=cfg.ray.task_cpus, num_gpus=g.gpus_per_task)
    pending = [task.remote(str(p), info.num_classes, info.image_size, g.source, options) for p in shards]
    parts = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        parts.append(ray.get(ready[0]))
        log.info("build_codes: %d/%d shards featurised", len(parts), len(shards))
        tracker.metrics({"shards_done": len(parts)})
    return add_sums(parts)


def code_vectors(cfg: FacesynthConfig, data: Path, info, tracker) -> tuple[np.ndarray, dict]:
    g = cfg.gif
    if g.source not in SOURCES:
        raise ValueError(f"gif.source must be one of {list(SOURCES)}, got {g.source!r}")
    if g.source == "file":
        if not g.features:
            raise ValueError("gif.source=file needs gif.features (a .safetensors or .npy features file)")
        return file_code_vectors(g.features, info.identities, g.features_identities or None), {
            "kind": "file", "features": g.features}
    if g.source == "embedder":
        embedder_prefix(cfg)  # fails before the shard pass when there is none
    sums, counts, skipped = _shard_pass(cfg, data, info, tracker)
    meta = {"kind": g.source, "skipped_faces": int(skipped)}
    if g.source == "pixels":
        vecs, pca = pca_vectors(sums, counts, g.pixel_dim, g.seed)
        return vecs, {**meta, "pixel_size": g.pixel_size, **pca}
    return unit_class_means(sums, counts, "embedder class means"), {**meta, "embedder": embedder_prefix(cfg)}


def run_build_codes(cfg: FacesynthConfig) -> dict:
    g, o = cfg.gif, cfg.gif.optimise
    data = codes_dataset_dir(cfg)
    info = read_dataset_json(data)
    out = layout.model_dir(cfg, "codes")
    hcfg = HomogeniseConfig(epochs=o.epochs, steps=o.steps, batch=o.batch, neighbours=o.neighbours,
                            partners=o.partners, t=o.t, mu=o.mu, delta=o.delta, lr=o.lr, seed=g.seed, device=g.device,
                            log_every=o.log_every, exact_knn_max=o.exact_knn_max, knn_block=o.knn_block)
    with mlflow_run(cfg, "build_codes") as tracker:
        start = time.perf_counter()
        vectors, source = code_vectors(cfg, data, info, tracker)
        source["dataset"] = str(data)
        log.info("build_codes: %d code vectors of dim %d from %s in %.1f s", *vectors.shape, g.source,
                 time.perf_counter() - start)
        summary = make_codebook(vectors, info.identities, out, length=g.code_length, vocab=g.vocab_size, hcfg=hcfg,
                                do_homogenise=g.homogenise, source=source, spread_sample=g.spread_sample,
                                kmeans_sample=g.kmeans_sample, seed=g.seed, overwrite=g.overwrite)
        for rec in summary.get("homogenise_history", []):
            tracker.metrics({f"homogenise/{k}": v for k, v in rec.items() if k != "step"}, step=int(rec["step"]))
        tracker.metrics(flat_summary(summary))
        from evaluation.minority_collapse_plots import plot_code_usage, plot_spread_before_after
        from fr.gif.hier_codes import load_codes

        book = load_codes(out)
        plot_code_usage(book.codes, book.vocab, summary["codes"].get("displaced_per_level"), out / "code_usage.png")
        tracker.artifact(out / "code_usage.png", "codes")

        if g.homogenise:
            fig_path = out / "code_vector_spread.png"
            plot_spread_before_after(np.load(out / "initial_vectors.npy", mmap_mode="r"),
                                     np.load(out / "code_vectors.npy", mmap_mode="r"), fig_path,
                                     sample=g.spread_sample, seed=g.seed)
            tracker.artifact(fig_path, "codes")
        tracker.artifact(out / "codes.json", "codes")
        log.info("build_codes: %d unique codes (l=%d, K=%d) in %s; %s", summary["codes"]["unique_codes"],
                 g.code_length, g.vocab_size, out, json.dumps({k: round(v, 4) for k, v in flat_summary(summary).items()}))
    return summary


def run_gif_collapse(cfg: FacesynthConfig) -> dict:
    """Minority collapse of a trained backbone on its training set: centroid spread per class-size bin (and of
    each ``gif.collapse_compare`` backbone, in the same figure; their metrics prefixed ``<name>/``)."""
    from evaluation.minority_collapse import collapse_report
    from evaluation.minority_collapse_plots import plot_collapse
    from fr.face_embedder import load_face_embedder

    prefixes = {cfg.run.name: cfg.gif.collapse_backbone or str(layout.fr_backbone_prefix(cfg)),
                **{str(k): str(v) for k, v in cfg.gif.collapse_compare.items()}}
    embedders = {}
    for name, prefix in prefixes.items():  # all loaded before any is measured: a bad path fails at once
        try:
            embedders[name] = load_face_embedder(prefix, flip=True)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"gif_collapse: backbone {name!r}: {e}") from e
    data = codes_dataset_dir(cfg)
    out = layout.report_dir(cfg, "gif_collapse")
    out.mkdir(parents=True, exist_ok=True)
    with mlflow_run(cfg, "gif_collapse") as tracker:
        reports = {name: collapse_report(embedder, data, bins=cfg.gif.collapse_bins, batch_rows=cfg.gif.batch_rows)
                   for name, embedder in embedders.items()}
        report = {**reports[cfg.run.name], "backbone": prefixes[cfg.run.name],
                  "compare": {k: {**v, "backbone": prefixes[k]} for k, v in reports.items() if k != cfg.run.name}}
        (out / "collapse.json").write_text(json.dumps(report, indent=1))
        plot_collapse(reports, out / "minority_collapse.png")
        tracker.metrics(report["metrics"])
        for name, rep in report["compare"].items():
            tracker.metrics({f"{name}/{k}": v for k, v in rep["metrics"].items()})
        tracker.artifact(out / "collapse.json", "gif_collapse")
        tracker.artifact(out / "minority_collapse.png", "gif_collapse")
        log.info("gif_collapse: %s", json.dumps({k: v["metrics"] for k, v in reports.items()}))
    return report
