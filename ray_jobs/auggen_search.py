"""``auggen_search``: AugGen's alpha/beta grid on Ray Tune, scored by ``m_total = m_s + m_d``.

Each grid point is a plain function trainable (no Ray Train): sample M images for each of K fixed
class pairs with ``c* = alpha c_i + beta c_j`` (``generation.mixing``; the same pairs and noise seeds at
every point), embed them with M_orig (the FR model trained on the same data) and score them with
``evaluation.mixing_metric``. A trial process keeps the generator and the FR model it loaded, so trials
that Tune runs in a reused actor do not load them again. One MLflow parent run (``<run>-auggen_search``)
holds the heat maps, the best/worst sample grids and ``best.json``; every trial is a nested run
(``MLflowLoggerCallback`` with the parent's id as ``mlflow.parentRunId``). A re-run with the same
search name (``auggen.search.report_name``, else ``run.name``) restores the Tune experiment: finished trials are
kept, unfinished ones are run. The settings the search started with are recorded (``settings.json``) and a re-run
with other settings (generator, M_orig, grid, pairs, images, steps, guidance, seed) is refused, so a finished
grid is never reported for settings it did not run with.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.mixing_metric import best_point, class_centres, m_total, plot_mixing_heatmaps
from fr.data.shards import read_dataset_json
from generation.generator import read_generator_info
from generation.mixing import check_weights, mixed_rows, sample_pairs
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import ConfigError, FacesynthConfig
from ray_jobs.run_record import check_or_write_record
from ray_jobs.tracking import Tracker, mlflow_run, tracking_uri

log = logging.getLogger(__name__)
GRID_RANGE = (0.0, 2.0)  # accepted alpha/beta values
PARENT_FILE = "mlflow_parent.json"
SETTINGS_FILE = "settings.json"
_LOADED: dict[str, Any] = {}  # per trial process: the generator and the FR model, loaded once


def search_fr_prefix(cfg: FacesynthConfig) -> Path:
    return Path(cfg.auggen.search.fr_backbone) if cfg.auggen.search.fr_backbone else layout.fr_backbone_prefix(cfg)


def _model_dir(cfg: FacesynthConfig) -> Path:
    return Path(cfg.auggen.generate.model) if cfg.auggen.generate.model else layout.model_dir(cfg, "auggen")


def check_same_data(model_dir: Path, fr_prefix: Path, num_classes: int) -> Path:
    """The FR model must be trained on the generator's dataset: ConfigError otherwise. Returns that dataset."""
    gen_cfg = json.loads((model_dir / "config.json").read_text())
    trained_on = gen_cfg.get("trained_on")
    if not trained_on:
        raise ConfigError(f"{model_dir}/config.json does not record its training set (trained_on): re-export it")
    protos = Path(fr_prefix).parent / "prototypes.json"  # beside a train_fr export: its class identities
    if protos.is_file():
        meta = json.loads(protos.read_text())
        fr_ids = meta.get("identities") or []
        if fr_ids and fr_ids[:len(gen_cfg.get("identities", []))] != gen_cfg.get("identities", []):
            raise ConfigError(f"the FR model {fr_prefix} was trained on other identities than the generator "
                              f"{model_dir} (its prototypes.json differs from the generator's training set "
                              f"{trained_on}); set auggen.search.fr_backbone to the FR model of that set")
    info = read_dataset_json(trained_on)
    if info.num_classes != num_classes:
        raise ConfigError(f"generator {model_dir} has {num_classes} classes, its training set {trained_on} has "
                          f"{info.num_classes}")
    return Path(trained_on)


def source_centres(embedder: Any, data_dir: Path, classes: np.ndarray, max_per_class: int = 50) -> np.ndarray:
    """Unit class centres of the real images of ``classes`` (rows in the order of ``classes``)."""
    from evaluation.embed import embed_faces, load_faces, read_columns

    labels, _ = read_columns(data_dir)
    rows = np.concatenate([np.flatnonzero(labels == c)[:max_per_class] for c in classes])
    info = read_dataset_json(data_dir)
    faces = np.stack(load_faces(data_dir, rows, info.image_size))
    emb, _ = embed_faces(embedder, faces)
    return class_centres(emb, labels[rows], classes)


def _loaded(model_dir: str, fr_prefix: str, opts: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from fr.face_embedder import load_face_embedder
    from generation.generator import load_generator

    key = f"{model_dir}|{fr_prefix}|{sorted(opts.items())}"
    if _LOADED.get("key") != key:
        torch.set_num_threads(int(opts["num_threads"]))
        device = "cuda" if opts["use_gpu"] and torch.cuda.is_available() else "cpu"
        _LOADED.update(key=key, generator=load_generator(model_dir, device=device, steps=opts["steps"],
                                                         guidance=opts["guidance"], batch_size=opts["batch_size"]),
                       embedder=load_face_embedder(fr_prefix, device=device))
    return _LOADED["generator"], _LOADED["embedder"]


def sample_grid_point(generator: Any, pairs: np.ndarray, alpha: float, beta: float, images_per_pair: int,
                      seed: int, output_size: int) -> np.ndarray:
    """Faces ``[K*M, S, S, 3]`` of the K mixed classes at (alpha, beta) (pair-major), at ``output_size``."""
    from fr.data.images import resize_faces

    rows = mixed_rows(pairs, alpha, beta, generator.num_classes, images_per_pair, seed)
    faces = generator.sample({"class_vector": rows["class_vector"]}, rows["seed"].tolist())
    return resize_faces(faces, output_size)


def grid_trial(config: dict[str, Any], model_dir: str, fr_prefix: str, pairs: np.ndarray, centres: np.ndarray,
               opts: dict[str, Any]) -> None:
    """One grid point: sample, embed with M_orig, report m_s, m_d, m_total."""
    from ray import tune

    if opts["fail_at_alpha"] and config["alpha"] == opts["fail_at_alpha"]:  # fault injection (tests)
        marker = Path(opts["report_dir"]) / f".failed_once_a{config['alpha']:g}_b{config['beta']:g}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"fault injection: trial alpha={config['alpha']} fails once (auggen.search.fail_at_alpha)")
    generator, embedder = _loaded(model_dir, fr_prefix, opts)
    faces = sample_grid_point(generator, pairs, config["alpha"], config["beta"], opts["images_per_pair"],
                              opts["seed"], opts["output_size"])
    emb, _ = embedder.embed(faces)
    emb = emb.reshape(len(pairs), opts["images_per_pair"], -1)
    k = len(pairs)
    tune.report(m_total(emb, centres[:k], centres[k:]))


def validate_search(cfg: FacesynthConfig) -> dict[str, Any]:
    s = cfg.auggen.search
    if not s.alphas or not s.betas:
        raise ConfigError("auggen.search.alphas and betas must be non-empty lists")
    for a in s.alphas:
        for b in s.betas:
            check_weights(a, b, *GRID_RANGE, where="auggen.search grid")
    if s.num_pairs < 1 or s.images_per_pair < 2:
        raise ConfigError("auggen.search.num_pairs must be >= 1 and images_per_pair >= 2 (m_s needs two images)")
    model_dir = _model_dir(cfg)
    gen_info = read_generator_info(model_dir)
    if gen_info["kind"] != "auggen_edm2":
        raise ConfigError(f"{model_dir} is a {gen_info['kind']!r} generator, not auggen_edm2")
    num_classes = gen_info["condition_dims"]["class_vector"]
    fr_prefix = search_fr_prefix(cfg)
    if not Path(f"{fr_prefix}.safetensors").is_file():
        raise FileNotFoundError(f"M_orig {fr_prefix}.safetensors not found (train_fr on the generator's data "
                                f"exports it; or set auggen.search.fr_backbone)")
    data_dir = check_same_data(model_dir, fr_prefix, num_classes)
    return {"model_dir": model_dir, "fr_prefix": fr_prefix, "data_dir": data_dir, "num_classes": num_classes}


def search_record(cfg: FacesynthConfig, checked: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the grid's scores (not its resources): what a restored experiment must match."""
    s = cfg.auggen.search
    return {"generator": str(Path(checked["model_dir"]).resolve()), "fr_model": str(Path(checked["fr_prefix"]).resolve()),
            "alphas": list(s.alphas), "betas": list(s.betas), "num_pairs": s.num_pairs,
            "images_per_pair": s.images_per_pair, "steps": s.steps, "guidance": s.guidance, "seed": cfg.run.seed,
            "output_size": cfg.auggen.generate.output_size}


def check_restorable(experiment: Path, report_dir: Path, record: dict[str, Any], restorable: bool) -> None:
    """Record the search's settings, or refuse a re-run whose settings differ from the experiment's (or whose
    experiment has no record, so its settings cannot be told)."""
    hint = (f"set auggen.search.report_name=<new name> for a second search in this run, or remove {experiment} "
            f"and {report_dir} to redo this one")
    if restorable and not (report_dir / SETTINGS_FILE).is_file():
        raise ConfigError(f"auggen_search: the Tune experiment {experiment} has no {SETTINGS_FILE} in {report_dir}, "
                          f"so its settings cannot be checked against these; {hint}")
    check_or_write_record(report_dir / SETTINGS_FILE, record, f"auggen_search {report_dir}", hint)


def _grids(cfg: FacesynthConfig, generator: Any, pairs: np.ndarray, points: dict[str, dict], out: Path) -> list[Path]:
    """Sample grids (one row per pair, M images) of the best and the worst grid point."""
    from evaluation.plots import image_grid

    s = cfg.auggen.search
    paths = []
    for name, p in points.items():
        faces = sample_grid_point(generator, pairs[:4], p["alpha"], p["beta"], s.images_per_pair, cfg.run.seed,
                                  generator.image_size)
        path = out / f"samples_{name}_a{p['alpha']:g}_b{p['beta']:g}.png"
        image_grid(list(faces), s.images_per_pair, path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def parent_run(cfg: FacesynthConfig, out: Path) -> Iterator[Tracker]:
    """The sweep's MLflow parent run: a new one, or on a resumed sweep the first one again (the restored
    Tune callbacks keep tagging trials with the first parent's id, so all trials stay under one parent)."""
    record = out / PARENT_FILE
    if not cfg.mlflow.enabled or not record.is_file():
        with mlflow_run(cfg, "auggen_search") as tracker:
            if tracker.run_id:
                record.write_text(json.dumps({"run_id": tracker.run_id}))
            yield tracker
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    run_id = json.loads(record.read_text())["run_id"]
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tags({"resumed": "true"})
        log.info("auggen_search: resuming into MLflow parent run %s", run_id)
        yield Tracker(run)


def run_auggen_search(cfg: FacesynthConfig) -> dict[str, Any]:
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from fr.face_embedder import load_face_embedder
    from generation.generator import load_generator

    s = cfg.auggen.search
    checked = validate_search(cfg)
    out = layout.auggen_search_dir(cfg).resolve()
    name = f"{layout.auggen_search_name(cfg)}-auggen_search"
    storage = layout.ray_storage(cfg)
    path = storage / name
    # before any work: a restore must be of a grid with these settings
    restorable = tune.Tuner.can_restore(str(path))
    check_restorable(path, out, search_record(cfg, checked), restorable)
    pairs = sample_pairs(checked["num_classes"], s.num_pairs, cfg.run.seed)
    embedder = load_face_embedder(checked["fr_prefix"])
    centres = source_centres(embedder, checked["data_dir"], np.concatenate([pairs[:, 0], pairs[:, 1]]))
    opts = {"steps": s.steps, "guidance": s.guidance, "batch_size": s.batch_size, "num_threads": s.num_threads,
            "use_gpu": s.gpus_per_trial > 0, "images_per_pair": s.images_per_pair, "seed": cfg.run.seed,
            "output_size": cfg.auggen.generate.output_size, "fail_at_alpha": s.fail_at_alpha}
    opts["report_dir"] = str(out)
    init_ray(cfg.ray)
    with parent_run(cfg, out) as tracker:
        trainable = tune.with_resources(
            tune.with_parameters(grid_trial, model_dir=str(checked["model_dir"].resolve()),
                                 fr_prefix=str(Path(checked["fr_prefix"]).resolve()), pairs=pairs, centres=centres,
                                 opts=opts),
            {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})
        if restorable:
            log.info("auggen_search: resuming %s (finished trials are kept)", path)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        else:
            callbacks = []
            if tracker.run_id:
                callbacks.append(MLflowLoggerCallback(tracking_uri(cfg), experiment_name=cfg.mlflow.experiment,
                                                      tags={"mlflow.parentRunId": tracker.run_id,
                                                            "job": "auggen_search_trial"}))
            tuner = tune.Tuner(
                trainable,
                param_space={"alpha": tune.grid_search(list(s.alphas)), "beta": tune.grid_search(list(s.betas))},
                tune_config=tune.TuneConfig(max_concurrent_trials=s.max_concurrent, reuse_actors=True),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks))
        grid = tuner.fit()
        results = []
        for r in grid:
            if r.error is None and r.metrics and "m_total" in r.metrics:
                results.append({"alpha": float(r.config["alpha"]), "beta": float(r.config["beta"]),
                                **{k: float(r.metrics[k]) for k in ("m_s", "m_d", "m_total")}})
        missing = len(s.alphas) * len(s.betas) - len(results)
        if not results:
            raise RuntimeError(f"auggen_search: no grid point finished ({missing} failed); see {path}")
        best = best_point(results)
        worst = dict(min(results, key=lambda r: r["m_total"]))
        summary = {**best, "num_points": len(results), "failed_points": missing, "num_pairs": s.num_pairs,
                   "images_per_pair": s.images_per_pair, "fr_model": str(checked["fr_prefix"]),
                   "generator": str(checked["model_dir"])}
        (out / "best.json").write_text(json.dumps(summary, indent=1))
        (out / "search.json").write_text(json.dumps({"best": best, "worst": worst, "results": results,
                                                     "pairs": pairs.tolist()}, indent=1))
        plot_mixing_heatmaps(results, out / "heatmap.png")
        generator = load_generator(checked["model_dir"], steps=s.steps, guidance=s.guidance, batch_size=s.batch_size)
        pngs = _grids(cfg, generator, pairs, {"best": best, "worst": worst}, out)
        tracker.metrics({f"best_{k}": v for k, v in best.items()})
        for p in [out / "best.json", out / "search.json", out / "heatmap.png", *pngs]:
            tracker.artifact(p, "auggen_search")
        log.info("auggen_search: best (alpha, beta) = (%g, %g): m_s %.4f m_d %.4f m_total %.4f; worst (%g, %g) %.4f",
                 best["alpha"], best["beta"], best["m_s"], best["m_d"], best["m_total"], worst["alpha"],
                 worst["beta"], worst["m_total"])
    return summary
