"""``evaluate``: dataset properties, identity leakage and verification, in one MLflow run.

For the reference (real) dataset and every dataset in ``evaluate.datasets``: embeddings with the
evaluator FR model through Ray Data batch inference (shards decoded by CPU tasks, embedded by an
actor pool that loads the evaluator once), cached beside each dataset; then consistency /
separability / diversity normalised by the reference (VIGFace Fig. 6a), identity leakage of the
synthetic rows against the reference (Fig. 6b, 11), genuine/impostor histograms (Fig. 10), image
grids (Fig. 4/5, 18-20), prototype figures (Fig. 1, 3) when the evaluator has a prototype file
beside it, and verification of ``evaluate.checkpoints``. Writes
``<run.output_dir>/evaluate/<run.name>/report.json`` and prints a compact table.

:func:`run_privacy_check` is the gate the ``generate`` job runs on a fresh synthetic dataset.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from evaluation.dataset_plots import (plot_leakage_distributions, plot_property_bars, plot_prototype_similarity,
                                      plot_tsne)
from evaluation.embed import (Embeddings, Evaluator, check_evaluator_fits, load_evaluator, load_faces,
                              read_columns, iter_shard_faces, shard_num_rows)
from evaluation.embedding_cache import dataset_fingerprint, evaluator_key, load_or_compute
from evaluation.leakage import LeakageReport, leakage_report, real_nearest_negative
from evaluation.plots import image_grid, plot_similarity_histogram
from evaluation.properties import DatasetProperties, compute_properties, lowest_fraction
from evaluation.report import (choose_prototypes, class_rows, dataset_summary, flat_metrics, format_summary_table,
                               format_verification_table, json_safe, pair_cosines, privacy_verdict, shared_identities,
                               prototype_rows, sample_pairs)
from fr.data.shards import DatasetInfo, ShardError, list_shards, read_dataset_json, write_dataset_json
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig
from ray_jobs.tracking import Tracker, mlflow_run
from ray_jobs.train_fr import fr_dataset_dir, fr_export_dir, fr_verify_bins

log = logging.getLogger(__name__)

GRID_CLASSES = 4  # classes in a per-identity grid
GRID_IMAGES = 8  # images per class row
LOWEST_FRACTION = 0.05  # Fig. 18-20
LOWEST_MAX_ROWS = 8
HIST_PAIRS = 5000  # genuine and impostor pairs per dataset (Fig. 10)
TSNE_CLASSES = 8  # real and virtual prototypes each
TSNE_IMAGES = 20  # images per prototype
FLIP = True  # flip test for evaluator embeddings (a candidate config key: evaluate.flip)


# ------------------------------------------------------------------------------------------------
# inputs


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
    backbone = Path(e.evaluator) if e.evaluator else fr_export_dir(cfg) / "backbone"
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


def reference_dir(cfg: FacesynthConfig) -> Path:
    """``evaluate.reference``, else the real data the generator was trained on (train_dit, then train_fr)."""
    return Path(cfg.evaluate.reference or cfg.train_dit.dataset or fr_dataset_dir(cfg))


def open_dataset(path: Path, what: str) -> DatasetInfo:
    """dataset.json of a shard directory, or a ShardError naming the setting and the path."""
    try:
        info = read_dataset_json(path)
        list_shards(path)
    except ShardError as exc:
        raise ShardError(f"{what}: no usable dataset at {path} ({exc})") from exc
    return info


@dataclass
class EvaluatedSet:
    """A dataset with its evaluator rows: embeddings, labels, FIQA, synthetic-row mask."""

    name: str
    path: Path
    info: DatasetInfo
    rows: Embeddings
    synthetic: np.ndarray

    @property
    def synthetic_rows(self) -> Embeddings:
        return self.rows.select(self.synthetic)


def real_identities_in(ds: EvaluatedSet, ref: EvaluatedSet) -> list[str]:
    """The reference's (real) identity names among ``ds``'s synthetic rows: real-ID augmentation."""
    return shared_identities(ds.rows.labels[ds.synthetic], ds.info.identities, ref.info.identities)


# ------------------------------------------------------------------------------------------------
# embeddings on Ray Data


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


def check_classes(labels: np.ndarray, info: DatasetInfo, where: str) -> None:
    """ValueError naming the classes of dataset.json that have no images in the shards."""
    counts = np.bincount(labels, minlength=info.num_classes)
    if counts.size != info.num_classes or (counts == 0).any():
        empty = np.flatnonzero(counts == 0)[:10].tolist()
        raise ValueError(f"{where}: dataset.json lists {info.num_classes} classes, the shards have labels "
                         f"0..{counts.size - 1}; empty classes (first 10): {empty}")


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


def common_fiqa_range(parts: list[Embeddings]) -> tuple[float, float] | None:
    """One min-max FIQA range over all compared datasets, so their diversities share a scale (None: no FIQA)."""
    if any(p.fiqa is None for p in parts):
        return None
    lo, hi = min(float(p.fiqa.min()) for p in parts), max(float(p.fiqa.max()) for p in parts)
    return (lo, hi) if hi > lo else None


def analysis_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------
# leakage


def _knn_kwargs(cfg: FacesynthConfig) -> dict:
    return {"query_chunk": cfg.evaluate.query_chunk, "key_chunk": cfg.evaluate.key_chunk, "device": analysis_device()}


def leakage_of(cfg: FacesynthConfig, synth: EvaluatedSet, ref: EvaluatedSet,
               real_reference: np.ndarray | None = None) -> LeakageReport:
    """Leakage of a dataset's synthetic rows against the reference (ValueError if it has none)."""
    if not synth.synthetic.any():
        raise ValueError(f"{synth.path}: no rows with source 'synthetic'; nothing to check for identity leakage")
    rows = synth.synthetic_rows
    if rows.dim != ref.rows.dim:
        raise ValueError(f"{synth.path}: {rows.dim}-d embeddings vs {ref.rows.dim}-d for the reference")
    return leakage_report(rows.embeddings, rows.labels, ref.rows.embeddings, ref.rows.labels, cfg.evaluate.leakage_mode,
                          threshold_quantile=cfg.evaluate.leakage_quantile, real_reference=real_reference,
                          **_knn_kwargs(cfg))


def plot_leakage_pairs(report: LeakageReport, synth: EvaluatedSet, ref: EvaluatedSet, path: Path,
                       max_pairs: int = 8) -> Path:
    """Fig. 11: top matches as (synthetic | nearest real) image pairs, one pair per grid row."""
    synth_global = np.flatnonzero(synth.synthetic)
    matches = report.top_matches[:max_pairs]
    real_rows = []
    for m in matches:
        if report.mode == "image":
            real_rows.append(m.real_index)
        else:  # centre mode: show the real image of the matched class most similar to the synthetic one
            members = np.flatnonzero(ref.rows.labels == m.real_index)
            q = synth.rows.embeddings[synth_global[m.synthetic_index]]
            real_rows.append(int(members[np.argmax(ref.rows.embeddings[members] @ q)]))
    s_faces = load_faces(synth.path, [synth_global[m.synthetic_index] for m in matches], synth.info.image_size)
    r_faces = load_faces(ref.path, real_rows, ref.info.image_size)
    tiles, labels = [], []
    for m, s, r, real_row in zip(matches, s_faces, r_faces, real_rows):
        tiles += [s, _resize(r, s.shape[0])]
        labels += [f"{synth.info.identities[m.synthetic_label]} {m.similarity:.3f}",
                   ref.info.identities[int(ref.rows.labels[real_row])]]
    image_grid(tiles, 2, path, labels=labels)
    return path


def _resize(face: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return face if face.shape[0] == side else cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)


def run_privacy_check(cfg: FacesynthConfig, synthetic_dir: str | Path, tracker: Tracker) -> dict[str, Any]:
    """Identity-leakage gate of a synthetic dataset against the reference; the verdict goes into its dataset.json.

    ``extra["privacy"] = {"passed", "leak_fraction", "real_level", "mode", "evaluator", "reference", ...}``;
    metrics ``privacy/*`` and the leakage plots go to ``tracker``. Returns the verdict.
    """
    files = evaluator_files(cfg)
    evaluator = load_evaluator(files.backbone, files.quality, files.flip)
    synthetic_dir, ref_dir = Path(synthetic_dir), reference_dir(cfg)
    sets, cache = load_sets(cfg, files, evaluator, {"synthetic": (synthetic_dir, "synthetic dataset"),
                                                   "reference": (ref_dir, "evaluate.reference")})
    synth, ref = sets["synthetic"], sets["reference"]
    report = leakage_of(cfg, synth, ref)
    verdict = privacy_verdict(report, cfg.evaluate.max_leak_fraction, real_identities_in(synth, ref),
                              evaluator=str(files.backbone), evaluator_key=files.key, reference=str(ref_dir),
                              dataset_fingerprint=dataset_fingerprint(synthetic_dir))
    info = read_dataset_json(synthetic_dir)
    info.extra["privacy"] = json_safe(verdict)
    write_dataset_json(synthetic_dir, info)
    tracker.metrics({f"privacy/{k}": float(v) for k, v in verdict.items() if isinstance(v, (bool, int, float))})
    out_dir = Path(cfg.run.output_dir) / "evaluate" / cfg.run.name / f"privacy_{display_name(synthetic_dir)}"
    plot_leakage_distributions(report, out_dir / "leakage_distributions.png")
    plot_leakage_pairs(report, synth, ref, out_dir / "leakage_top_matches.png")
    for png in sorted(out_dir.glob("*.png")):
        tracker.artifact(png, "privacy")
    log.info("privacy check of %s: %s (leak fraction %.4f, real level %.4f)", synthetic_dir,
             "PASSED" if verdict["passed"] else "FAILED", verdict["leak_fraction"], verdict["real_level"])
    return verdict


# ------------------------------------------------------------------------------------------------
# figures


def _class_grid(ds: EvaluatedSet, classes: list[int], path: Path, per_class: int = GRID_IMAGES,
                captions: list[str] | None = None) -> Path:
    """One row per class (blank tiles where a class has fewer images)."""
    rows = class_rows(ds.rows.labels, classes, per_class)
    faces = load_faces(ds.path, np.concatenate(rows), ds.info.image_size)
    side = ds.info.image_size
    blank = np.full((side, side, 3), 255, np.uint8)
    tiles, labels, k = [], [], 0
    for c, r in enumerate(rows):
        tiles += faces[k:k + len(r)] + [blank] * (per_class - len(r))
        labels += [captions[c] if captions and j == 0 else "" for j in range(per_class)]
        k += len(r)
    image_grid(tiles, per_class, path, labels=labels)
    return path


def _lowest_grids(ds: EvaluatedSet, props: DatasetProperties, out: Path) -> list[Path]:
    """Fig. 18-20: classes with the lowest consistency, nearest-centre distance (separability), diversity."""
    names = ds.info.identities
    paths = []
    for metric, fig in (("consistency", "consistency"), ("nearest_distance", "separability"), ("diversity", "diversity")):
        classes = lowest_fraction(props, metric, LOWEST_FRACTION)[:LOWEST_MAX_ROWS].tolist()
        if not classes:
            continue
        path = out / f"lowest_{fig}_{ds.name}.png"
        if metric == "nearest_distance":  # each class in a row above its most similar other class
            shown, captions = [], []
            for k in classes:
                near = int(props.nearest_class[k])
                shown += [k, near]
                captions += [f"{names[k]} cos {props.nearest_class_similarity[k]:.2f}", f"nearest: {names[near]}"]
            paths.append(_class_grid(ds, shown, path, GRID_IMAGES // 2, captions))
        else:
            values = props.metric(metric)
            captions = [f"{names[c]} {fig[0].upper()}={values[c]:.3f}" for c in classes]
            paths.append(_class_grid(ds, classes, path, GRID_IMAGES, captions))
    return paths


def _similarity_histogram(ds: EvaluatedSet, out: Path, seed: int) -> Path | None:
    """Fig. 10: cosine of genuine (same class) vs impostor (different class) pairs sampled from the dataset."""
    i, j, same = sample_pairs(ds.rows.labels, HIST_PAIRS, seed)
    if not same.any() or same.all():
        return None
    path = out / f"similarity_hist_{ds.name}.png"
    plot_similarity_histogram(pair_cosines(ds.rows.embeddings, i, j), same, path,
                              title=f"{ds.name}: genuine vs impostor cosine")
    return path


def _prototype_figures(files: EvaluatorFiles, sets: dict[str, EvaluatedSet], out: Path, seed: int) -> list[Path]:
    """Fig. 3 (prototype cosine matrix) and Fig. 1 (t-SNE of real/virtual prototypes with their images)."""
    from fr.prototypes import load_prototypes

    protos = load_prototypes(files.prototypes)
    weight = protos.weight.float().numpy()
    paths = [out / "prototype_similarity.png"]
    plot_prototype_similarity(weight, protos.num_real, paths[0], seed=seed)
    class_protos = {name: prototype_rows(ds.info.identities, protos.identities, protos.num_real, protos.num_virtual,
                                         ds.info.extra.get("proto_index")) for name, ds in sets.items()}
    chosen = choose_prototypes(class_protos, protos.num_real, protos.num_virtual, TSNE_CLASSES)
    emb, lab = [], []
    for k, (_, name, label) in enumerate(chosen):
        if name is not None:
            idx = class_rows(sets[name].rows.labels, [label], TSNE_IMAGES)[0]
            emb.append(sets[name].rows.embeddings[idx])
            lab.append(np.full(idx.size, k))
    if emb:
        rows = np.array([row for row, _, _ in chosen])
        paths.append(out / "tsne_prototypes.png")
        plot_tsne(weight[rows], np.concatenate(emb), np.concatenate(lab), paths[-1],
                  is_virtual=rows >= protos.num_real, seed=seed)
    return paths


# ------------------------------------------------------------------------------------------------
# verification


@ray.remote
def _verify_task(prefix: str, bins: list[str], batch_size: int, use_gpu: bool) -> tuple[dict, dict[str, bytes]]:
    from fr.backbones import load_backbone
    from ray_jobs.train_fr import verification_sets, evaluate_backbone

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    backbone = load_backbone(prefix, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_backbone(backbone, verification_sets(bins), device, batch_size, plot_dir=Path(tmp))
        return metrics, {p.name: p.read_bytes() for p in sorted(Path(tmp).glob("*.png"))}


def checkpoint_name(prefix: Path, taken: set[str]) -> str:
    """``runs/x/fr/<run>/backbone`` -> ``<run>``; a file stem otherwise; made unique."""
    base = prefix.parent.name if prefix.name == "backbone" and prefix.parent.name else prefix.name
    return _unique(base, taken)


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def verify_checkpoints(cfg: FacesynthConfig, out: Path) -> dict[str, dict[str, float]]:
    """10-fold verification (flip test) of every ``evaluate.checkpoints`` backbone (default: the train_fr
    export, when there is one), one Ray task each."""
    e = cfg.evaluate
    checkpoints = list(e.checkpoints)
    if not checkpoints and Path(str(fr_export_dir(cfg) / "backbone") + ".safetensors").is_file():
        checkpoints = [str(fr_export_dir(cfg) / "backbone")]
    if not checkpoints:
        return {}
    bins = [Path(b) for b in e.verify_bins] if e.verify_bins else fr_verify_bins(cfg)
    missing = [str(b) for b in bins if not b.is_file()]
    if missing or not bins:
        raise FileNotFoundError(f"evaluate.verify_bins: {'not found: ' + str(missing) if missing else 'none found'}"
                                " (set evaluate.verify_bins to .bin files)")
    prefixes = [Path(c).with_suffix("") if Path(c).suffix in (".safetensors", ".json") else Path(c)
                for c in checkpoints]
    for p in prefixes:
        if not Path(str(p) + ".safetensors").is_file():
            raise FileNotFoundError(f"evaluate.checkpoints: {p}.safetensors not found")
    init_ray(cfg.ray)
    remote = {"num_cpus": e.cpus_per_actor, "num_gpus": e.gpus_per_actor}
    refs = [_verify_task.options(**remote).remote(str(p), [str(b) for b in bins], e.batch_size, e.gpus_per_actor > 0)
            for p in prefixes]
    taken: set[str] = set()
    results = {}
    for p, (metrics, pngs) in zip(prefixes, ray.get(refs)):
        name = checkpoint_name(p, taken)
        results[name] = metrics
        for fname, data in pngs.items():
            (out / "verification" / name).mkdir(parents=True, exist_ok=True)
            (out / "verification" / name / fname).write_bytes(data)
    return results


# ------------------------------------------------------------------------------------------------
# the job


def display_name(path: Path) -> str:
    """``.../<name>/train`` -> ``<name>`` (the layout of prepare/generate), else the folder name."""
    return path.parent.name if path.name == "train" and path.parent.name else path.name


def _dataset_names(cfg: FacesynthConfig, ref: Path) -> dict[str, tuple[Path, str]]:
    """Unique display names -> (path, the setting that named it); the reference first."""
    taken: set[str] = set()
    named = {}
    datasets = [Path(d) for d in cfg.evaluate.datasets]
    if not datasets:  # default: the dataset the generate job writes, when there is one
        from ray_jobs.generate import generate_out_dir

        if (generate_out_dir(cfg) / "dataset.json").is_file():
            datasets = [generate_out_dir(cfg)]
    for i, p in enumerate([ref] + datasets):
        if i > 0 and p.resolve() == ref.resolve():
            continue
        named[_unique(display_name(p), taken)] = (p, "evaluate.reference" if i == 0 else f"evaluate.datasets[{i - 1}]")
    return named


def run_evaluate(cfg: FacesynthConfig) -> dict[str, Any]:
    """The ``evaluate`` job; returns the report written to ``report.json``."""
    files = evaluator_files(cfg)
    evaluator = load_evaluator(files.backbone, files.quality, files.flip)
    ref_path = reference_dir(cfg)
    named = _dataset_names(cfg, ref_path)
    ref_name = next(iter(named))
    out = Path(cfg.run.output_dir) / "evaluate" / cfg.run.name
    out.mkdir(parents=True, exist_ok=True)
    if files.prototypes is not None:
        from fr.prototypes import load_prototypes

        check_evaluator_fits(evaluator, embedding_size=load_prototypes(files.prototypes).embedding_size,
                             where=f"prototypes {files.prototypes}")
    with mlflow_run(cfg, "evaluate") as tracker:
        sets, cache = load_sets(cfg, files, evaluator, named)
        ref = sets[ref_name]
        device = analysis_device()
        fiqa_range = common_fiqa_range([ds.rows for ds in sets.values()])
        props = {}
        for name, ds in sets.items():
            try:
                props[name] = compute_properties(ds.rows.embeddings, ds.rows.labels, ds.rows.fiqa,
                                                 sep_threshold=cfg.evaluate.sep_threshold, fiqa_range=fiqa_range,
                                                 device=device)
            except ValueError as exc:
                raise ValueError(f"{named[name][1]} {ds.path}: {exc}") from exc
        real_reference = None
        leak: dict[str, LeakageReport] = {}
        privacy: dict[str, dict] = {}
        figures: list[Path] = []
        for name, ds in sets.items():
            if name == ref_name or not ds.synthetic.any():
                continue
            if real_reference is None:
                real_reference = real_nearest_negative(ref.rows.embeddings, ref.rows.labels, cfg.evaluate.leakage_mode,
                                                       **_knn_kwargs(cfg))
            leak[name] = leakage_of(cfg, ds, ref, real_reference)
            privacy[name] = privacy_verdict(leak[name], cfg.evaluate.max_leak_fraction, real_identities_in(ds, ref),
                                            evaluator=str(files.backbone), reference=str(ref.path))
            privacy[name]["top_matches"] = [asdict(m) for m in leak[name].top_matches]
            figures.append(plot_leakage_pairs(leak[name], ds, ref, out / f"leakage_top_matches_{name}.png"))
        summaries = {name: dataset_summary(props[name], props[ref_name], len(ds.rows), ds.info.identities,
                                           privacy.get(name)) for name, ds in sets.items()}
        if leak:
            figures.append(out / "leakage_distributions.png")
            plot_leakage_distributions(list(leak.items()), figures[-1])
        figures.append(out / "properties_vs_reference.png")
        plot_property_bars({n: s["normalised"] for n, s in summaries.items()}, figures[-1])
        for name, ds in sets.items():
            figures.append(_class_grid(ds, list(range(min(GRID_CLASSES, ds.info.num_classes))),
                                       out / f"identities_{name}.png",
                                       captions=ds.info.identities[:GRID_CLASSES]))
            figures += _lowest_grids(ds, props[name], out)
            hist = _similarity_histogram(ds, out, cfg.run.seed)
            figures += [hist] if hist else []
        if files.prototypes is not None:
            figures += _prototype_figures(files, sets, out, cfg.run.seed)
        verification = verify_checkpoints(cfg, out)
        figures += sorted((out / "verification").glob("*/*.png"))

        report = json_safe({
            "evaluator": str(files.backbone), "evaluator_quality": str(files.quality) if files.quality else None,
            "evaluator_key": files.key, "reference": ref_name,
            "datasets": {n: {"path": str(sets[n].path), **s} for n, s in summaries.items()},
            "verification": verification, "embedding_cache": cache,
            "settings": {k: getattr(cfg.evaluate, k) for k in ("leakage_mode", "leakage_quantile",
                                                               "max_leak_fraction", "sep_threshold")},
            "figures": [str(p.relative_to(out)) for p in figures],
        })
        (out / "report.json").write_text(json.dumps(report, indent=1))
        tracker.metrics(flat_metrics(summaries, verification))
        for p in figures:
            tracker.artifact(p, "evaluate/" + str(p.parent.relative_to(out)) if p.parent != out else "evaluate")
        tracker.artifact(out / "report.json", "evaluate")
        table = format_summary_table(summaries, ref_name)
        if verification:
            table += "\n\n" + format_verification_table(verification)
        print(table, flush=True)
        (out / "summary.txt").write_text(table + "\n")
        tracker.artifact(out / "summary.txt", "evaluate")
        return report
