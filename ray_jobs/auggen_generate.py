"""``auggen_generate``: D_repro (``which=repro``: one-hot conditions of the training classes) or D_aug
(``which=mixed``: N new classes ``alpha c_i + beta c_j``, M images each) from AugGen's EDM2 generator.

The plan (rows, pairs, seeds) is made by ``generation.mixing`` and saved as ``plan.json``; each shard is
one chunk of rows, sampled by a Ray actor (``generation.row_sampler.RowSampler`` loads the generator
once) and written atomically by the driver, so an interrupted run only redoes missing shards and a
re-run with another plan into the same folder is refused. D_aug's ``dataset.json`` provenance holds
each new class's source classes and alpha/beta: it is augmentation derived from real identities, never
privacy-free, and no privacy pass is run for it. D_repro is evaluated by the ``evaluate`` job.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray

from fr.data.shards import (build_dataset_info, read_dataset_json, shard_path, write_dataset_json, write_shard)
from generation.generator import read_generator_info
from generation.mixing import check_weights, mixed_rows, repro_rows, sample_pairs
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import ConfigError, FacesynthConfig, with_overrides
from ray_jobs.run_record import check_or_write_record
from ray_jobs.tracking import mlflow_run

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"
PRIVACY = "augmentation (derived from real identities): not privacy-free"
WEIGHT_RANGE = (0.0, 2.0)  # alpha/beta accepted by the generate job (the search grid is within it)


def search_best_file(cfg: FacesynthConfig) -> Path:
    return layout.auggen_search_dir(cfg) / "best.json"


def chosen_weights(cfg: FacesynthConfig) -> tuple[float, float, str]:
    """(alpha, beta, where from): the config's, else auggen_search's best.json."""
    g = cfg.auggen.generate
    if g.alpha > 0 and g.beta > 0:
        return g.alpha, g.beta, "config"
    best = search_best_file(cfg)
    if not best.is_file():
        raise ConfigError(f"auggen.generate.alpha/beta are unset and {best} does not exist: run auggen_search "
                          f"first or set auggen.generate.alpha=... auggen.generate.beta=...")
    data = json.loads(best.read_text())
    return float(data["alpha"]), float(data["beta"]), str(best)


def build_plan(cfg: FacesynthConfig, model_dir: Path) -> dict[str, Any]:
    """Rows to generate and the per-class provenance; ConfigError/MixingError before any work."""
    g = cfg.auggen.generate
    if g.which not in ("repro", "mixed"):
        raise ConfigError(f"auggen.generate.which must be repro|mixed, got {g.which!r}")
    if g.images_per_class < 1 or g.rows_per_shard < 1 or g.batch_size < 1:
        raise ConfigError("auggen.generate.images_per_class, rows_per_shard and batch_size must be >= 1")
    model_cfg = json.loads((model_dir / "config.json").read_text())
    identities = model_cfg.get("identities") or [str(i) for i in range(model_cfg["model"]["num_classes"])]
    num_classes = int(model_cfg["model"]["num_classes"])
    if g.which == "repro":
        n = g.num_classes or num_classes
        if n > num_classes:
            raise ConfigError(f"auggen.generate.num_classes {n} exceeds the generator's {num_classes} classes")
        classes = np.arange(n)
        rows = repro_rows(classes, num_classes, g.images_per_class, cfg.run.seed)
        class_info = [{"label": int(c), "identity": identities[c]} for c in classes]
        labels, identity = rows["label"], [identities[c] for c in rows["label"]]
        extra = {"which": "repro"}
    else:
        alpha, beta, source = chosen_weights(cfg)
        check_weights(alpha, beta, *WEIGHT_RANGE, where="auggen.generate alpha/beta")
        pairs = sample_pairs(num_classes, g.num_new_classes, cfg.run.seed)
        rows = mixed_rows(pairs, alpha, beta, num_classes, g.images_per_class, cfg.run.seed)
        class_info = [{"label": k, "identity": f"auggen_mix{k:06d}", "sources": [int(i), int(j)],
                       "source_identities": [identities[i], identities[j]], "alpha": alpha, "beta": beta}
                      for k, (i, j) in enumerate(pairs)]
        labels, identity = rows["pair"], [class_info[k]["identity"] for k in rows["pair"]]
        extra = {"which": "mixed", "alpha": alpha, "beta": beta, "weights_from": source}
    return {"rows": rows, "labels": np.asarray(labels, np.int64), "identity": identity, "classes": class_info,
            "extra": extra, "num_classes": num_classes}


def check_plan(out_dir: Path, plan: dict[str, Any], record: dict[str, Any]) -> None:
    """Write plan.json, or refuse to continue a folder made with another plan (nothing is overwritten)."""
    check_or_write_record(out_dir / PLAN_FILE, record, f"{out_dir} (a generation)",
                          "choose another auggen.generate.dataset_name or remove the folder")


def _chunk_batch(plan: dict[str, Any], lo: int, hi: int) -> dict[str, np.ndarray]:
    rows = plan["rows"]
    return {"noise_seed": rows["seed"][lo:hi], "cond_class_vector": rows["class_vector"][lo:hi],
            "label": plan["labels"][lo:hi], "row": np.arange(lo, hi)}


def generate_shards(cfg: FacesynthConfig, plan: dict[str, Any], model_dir: Path, out_dir: Path) -> dict[str, int]:
    """Sample every missing shard on a pool of Ray actors; the driver writes each shard as it arrives."""
    from generation.row_sampler import RowSampler

    g = cfg.auggen.generate
    total = len(plan["labels"])
    chunks = [(c, lo, min(lo + g.rows_per_shard, total)) for c, lo in enumerate(range(0, total, g.rows_per_shard))]
    todo = [c for c in chunks if not shard_path(out_dir, c[0]).exists()]
    log.info("auggen_generate: %d rows in %d shards, %d to do", total, len(chunks), len(todo))
    if not todo:
        return {"shards": len(chunks), "shards_resumed": len(chunks), "rows_generated": 0}
    actor_cls = ray.remote(num_cpus=g.cpus_per_actor, num_gpus=g.gpus_per_actor if g.use_gpu else 0)(RowSampler)
    actors = [actor_cls.remote(str(model_dir), image_format=g.image_format, use_gpu=g.use_gpu,
                               output_size=g.output_size, steps=g.steps, guidance=g.guidance, batch_size=g.batch_size)
              for _ in range(max(1, min(g.num_actors, len(todo))))]
    pending = {actors[k % len(actors)].__call__.remote(_chunk_batch(plan, lo, hi)): (c, lo, hi)
               for k, (c, lo, hi) in enumerate(todo)}
    done_rows = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        c, lo, hi = pending.pop(ready[0])
        out = ray.get(ready[0])
        records = [{"image": bytes(out["image"][r]), "label": int(out["label"][r]),
                    "identity": plan["identity"][int(out["row"][r])], "landmarks": out["landmarks"][r],
                    "source": "synthetic"} for r in range(len(out["row"]))]
        write_shard(shard_path(out_dir, c), records)
        done_rows += hi - lo
        log.info("auggen_generate: shard %d written (%d/%d rows of this run)", c, done_rows,
                 sum(h - lo_ for _, lo_, h in todo))
    return {"shards": len(chunks), "shards_resumed": len(chunks) - len(todo), "rows_generated": done_rows}


def run_auggen_generate(cfg: FacesynthConfig) -> dict[str, Any]:
    g = cfg.auggen.generate
    model_dir = layout.auggen_model_dir(cfg)
    info_gen = read_generator_info(model_dir)
    if info_gen["kind"] != "auggen_edm2":
        raise ConfigError(f"auggen.generate.model {model_dir} is a {info_gen['kind']!r} generator, not auggen_edm2")
    plan = build_plan(cfg, model_dir)
    out_dir = layout.auggen_dataset_dir(cfg)
    record = {"which": g.which, "model": str(model_dir.resolve()), "seed": cfg.run.seed, "steps": g.steps,
              "guidance": g.guidance, "output_size": g.output_size, "rows_per_shard": g.rows_per_shard,
              "num_rows": int(len(plan["labels"])), "classes": plan["classes"]}
    check_plan(out_dir, plan, record)
    init_ray(cfg.ray)
    with mlflow_run(cfg, f"auggen_generate_{g.which}") as tracker:
        counts = generate_shards(cfg, plan, model_dir, out_dir)
        provenance = {"generator": "auggen_edm2", "model": str(model_dir.resolve()), "seed": cfg.run.seed,
                      "sampling": {"steps": g.steps, "guidance": g.guidance}, "privacy": PRIVACY,
                      "classes": plan["classes"], **plan["extra"]}
        info = build_dataset_info(out_dir, g.output_size, provenance, extra=counts)
        write_dataset_json(out_dir, info)
        tracker.metrics({"num_classes": info.num_classes, "num_images": info.num_images, **counts})
        tracker.tags({"privacy": PRIVACY, "which": g.which})
        log.info("auggen_generate: %s -> %s (%d classes, %d images); %s", g.which, out_dir, info.num_classes,
                 info.num_images, PRIVACY)
        result = {"out_dir": out_dir, "info": info}
        log_review(cfg, tracker, plan, out_dir, info)
        if g.which == "repro" and g.evaluate:  # inside the run: top-1 is logged here, evaluate nests under it
            result["top1"] = repro_top1(cfg, out_dir)
            tracker.metrics({f"repro/{k}": v for k, v in result["top1"].items() if isinstance(v, (int, float))})
            tracker.artifact(out_dir.parent / "repro_top1.json", "auggen_generate")
            result["evaluate"] = evaluate_repro(cfg, out_dir)
    return result


def log_review(cfg: FacesynthConfig, tracker: Any, plan: dict[str, Any], out_dir: Path, info: Any) -> None:
    """The figures a reader expects: a class grid of the set; for D_aug also each new class beside its
    two sources (with alpha/beta) and the written set's m_s / m_d by M_orig (when that model exists)."""
    from evaluation.dataset_plots import sample_grid

    tracker.artifact(sample_grid(out_dir, out_dir.parent / f"grid_{cfg.auggen.generate.which}.png"), "auggen_generate")
    if cfg.auggen.generate.which != "mixed":
        return
    from evaluation.auggen_review import mixed_class_figure, mixed_set_scores

    extra = plan["extra"]
    tracker.metrics({"alpha": extra["alpha"], "beta": extra["beta"]})
    real_dir = Path(_trained_on(cfg))
    real_size = read_dataset_json(real_dir).image_size
    png = out_dir.parent / f"mixed_classes_a{extra['alpha']:g}_b{extra['beta']:g}.png"
    tracker.artifact(mixed_class_figure(out_dir, real_dir, plan["classes"], info.image_size, real_size, png),
                     "auggen_generate")
    m_orig = Path(cfg.auggen.search.fr_backbone or layout.fr_backbone_prefix(cfg))
    if not Path(f"{m_orig}.safetensors").is_file():
        log.warning("auggen_generate: M_orig %s.safetensors not found: m_s/m_d of D_aug not logged", m_orig)
        return
    from fr.face_embedder import load_face_embedder

    scores = mixed_set_scores(load_face_embedder(m_orig), out_dir, real_dir, plan["classes"], info.image_size,
                              real_size)
    tracker.metrics({f"mixed/{k}": v for k, v in scores.items()})
    tracker.tags({"mixed.m_orig": str(m_orig)})
    log.info("auggen_generate: D_aug m_s %.4f m_d %.4f m_total %.4f (M_orig %s)", scores["m_s"], scores["m_d"],
             scores["m_total"], m_orig)


def repro_evaluator(cfg: FacesynthConfig) -> Path:
    """The FR model that judges D_repro: ``auggen.generate.evaluator``, else the independent evaluator
    (``evaluate.evaluator`` or the run's ``train_evaluator`` export) when it exists, else M_orig (the run's
    ``train_fr`` export), which is independent only for a generator with no class basis: ``label_basis``
    conditions the generator on M_orig's prototypes, so then it is refused as the judge."""
    g = cfg.auggen.generate
    if g.evaluator:
        return Path(g.evaluator)
    independent = layout.evaluator_prefix(cfg)
    if cfg.evaluate.evaluator or Path(f"{independent}.safetensors").is_file():
        return independent
    if cfg.auggen.train.label_basis:
        raise ConfigError(f"D_repro needs an FR model that played no part in the generator: auggen.train.label_basis "
                          f"conditions it on M_orig's prototypes, and no independent evaluator exists at {independent} "
                          f"(run train_evaluator, or set auggen.generate.evaluator=...)")
    return layout.fr_backbone_prefix(cfg)


def repro_top1(cfg: FacesynthConfig, out_dir: Path) -> dict[str, float]:
    """D_repro top-1: is each face nearest (cosine) to its own class centre of the real images? Embedded by
    ``auggen.generate.evaluator``; it is an independent judge only if it played no part in training the
    generator (train_auggen uses no FR model, so the run's train_fr export qualifies for D_repro)."""
    from evaluation.embed import embed_shards
    from evaluation.embedding_cache import evaluator_key, load_or_compute
    from evaluation.mixing_metric import class_centres, own_class_top1
    from fr.data.shards import list_shards
    from fr.face_embedder import load_face_embedder

    reference = Path(_trained_on(cfg))
    prefix = repro_evaluator(cfg)
    evaluator = load_face_embedder(prefix)  # flip on, no quality head: the cache key below says so
    real_info, gen_info = read_dataset_json(reference), read_dataset_json(out_dir)
    # the real reference set is the same at every call (a selection grid scores many sets against it): its
    # embeddings are cached beside it (evaluation.embedding_cache), keyed by this evaluator's files
    real, stats = load_or_compute([reference], evaluator_key(prefix, None, True),
                                  lambda shards: embed_shards(evaluator, shards, real_info.image_size))
    log.info("auggen_generate: reference embeddings: %d shards cached, %d embedded", stats.cached[str(reference)],
             stats.computed[str(reference)])
    real_emb = np.concatenate([e.embeddings for e in real.values()])
    real_labels = np.concatenate([e.labels for e in real.values()])
    gen = embed_shards(evaluator, list_shards(out_dir), gen_info.image_size)
    centres = class_centres(real_emb, real_labels, range(real_info.num_classes))
    top1 = own_class_top1(np.concatenate([e.embeddings for e in gen.values()]),
                          np.concatenate([e.labels for e in gen.values()]), centres)
    top1["evaluator"] = str(prefix)
    (out_dir.parent / "repro_top1.json").write_text(json.dumps(top1, indent=1))
    log.info("auggen_generate: D_repro top-1 %.4f (chance %.4f) by %s", top1["top1"], top1["chance"],
             top1["evaluator"])
    return top1


def _trained_on(cfg: FacesynthConfig) -> str:
    trained_on = json.loads((layout.auggen_model_dir(cfg) / "config.json").read_text()).get("trained_on", "")
    return trained_on or str(layout.real_dataset_dir(cfg))


def evaluate_repro(cfg: FacesynthConfig, out_dir: Path) -> Any:
    """D_repro through the existing ``evaluate`` job against the generator's training set."""
    from ray_jobs.jobs import JOBS

    reference = _trained_on(cfg)
    read_dataset_json(reference)  # a clear error if the training set moved
    # its own report folder: the run's VIGFace evaluation (if any) is not overwritten
    sub = with_overrides(cfg, [f"evaluate.datasets=[{out_dir}]", f"evaluate.reference={reference}",
                               f"evaluate.report_name={cfg.run.name}-{out_dir.parent.name}"])
    return JOBS["evaluate"](sub)
