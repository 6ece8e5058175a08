"""``compare``: VIGFace Tables 1-2 at any scale. Trains FR on (a) the real dataset, (b) the virtual-only
synthetic dataset, (c) real + real-ID augmentation, (d) real + virtual + real-ID augmentation, and
verifies all four on the same benchmarks; the part ``auggen`` is AugGen's D_aug (mixed new classes,
``auggen_generate which=mixed``), so ``real+auggen`` is AugGen's real + augmented FR model. Missing synthetic datasets are generated first (both
generation runs resume), mixes are merged by identity name (``fr.data.merge``), each FR run is an ordinary
resumable ``train_fr`` run named ``<run.name>-cmp-<setting>-<data>`` (``<data>``: 8 hex digits of the
training data's content fingerprint, so a regenerated synthetic set trains new runs instead of reusing ones
trained on its earlier version; ``-s<seed>`` added per seed when ``compare.seeds`` lists several: the row is
then the mean +- std over the seeds).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fr.data.merge import merge_datasets
from fr.data.shards import MANIFEST, content_fingerprint, read_dataset_json, real_image_count
from evaluation.report import format_compare_table, seed_mean_std
from ray_jobs import layout
from ray_jobs.config import FacesynthConfig, with_overrides
from ray_jobs.jobs import JOBS
from ray_jobs.tracking import mlflow_run

log = logging.getLogger(__name__)
PARTS = {"real", "virtual", "realaug", "auggen"}


def _setting_parts(setting: str) -> list[str]:
    parts = setting.split("+")
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"compare.settings: {setting!r} has unknown part(s) {unknown}; parts: {sorted(PARTS)} "
                         f"joined with '+', e.g. real+virtual+realaug")
    return parts


def virtual_config(cfg: FacesynthConfig) -> FacesynthConfig:
    """The ``generate`` config of the virtual-only set (b); equal to the pipeline's own ``generate`` when
    ``compare.virtual_name`` / identities / images match it, so the pipeline's dataset is reused."""
    c = cfg.compare
    return with_overrides(cfg, ["generate.which=virtual", f"generate.dataset_name={c.virtual_name}",
                                f"generate.num_identities={c.virtual_identities}",
                                f"generate.images_per_identity={c.virtual_images_per_identity}",
                                *c.generate_overrides])


def realaug_config(cfg: FacesynthConfig) -> FacesynthConfig:
    """The ``generate`` config of the real-ID augmentation (every real class topped up to ``augment_real_to``).

    Real-ID augmentation shows real people: it is not claimed privacy-free, so no privacy gate here.
    ``compare.realaug_overrides`` apply to it alone (after ``generate_overrides``), e.g. its own guidance.
    """
    c = cfg.compare
    return with_overrides(cfg, ["generate.which=real", "generate.num_identities=0",
                                f"generate.augment_real_to={c.augment_real_to}",
                                f"generate.dataset_name={c.realaug_name}", "generate.privacy_check=false",
                                *c.generate_overrides, *c.realaug_overrides])


def _missing_given(path: Path, key: str) -> None:
    """A dataset the user named has no manifest: say so, and where it is when they named its parent folder."""
    inner = path / "train"  # a job's dataset folder holds the set itself in train/
    hint = f" (its train/ folder has one: compare.{key}={inner})" if (inner / MANIFEST).exists() else ""
    raise FileNotFoundError(f"compare.{key}: {path} has no {MANIFEST}{hint}")


def _source_dirs(cfg: FacesynthConfig, needed: set[str]) -> dict[str, Path]:
    """The real, virtual and real-ID augmentation datasets; synthetic ones are generated if missing."""
    c = cfg.compare
    dirs = {"real": Path(c.real) if c.real else layout.real_dataset_dir(cfg)}
    if "virtual" in needed:
        vcfg = virtual_config(cfg)
        dirs["virtual"] = Path(c.virtual) if c.virtual else layout.generate_out_dir(vcfg)
        if not (dirs["virtual"] / MANIFEST).exists():
            if c.virtual:
                _missing_given(dirs["virtual"], "virtual")
            JOBS["generate"](vcfg)
    if "realaug" in needed:
        if c.augment_real_to < 1:
            raise ValueError("compare.augment_real_to must be >= 1 for a real-ID augmentation setting")
        acfg = realaug_config(cfg)
        dirs["realaug"] = layout.generate_out_dir(acfg)
        if not (dirs["realaug"] / MANIFEST).exists():
            JOBS["generate"](acfg)
    if "auggen" in needed:
        gcfg = with_overrides(cfg, ["auggen.generate.which=mixed"])
        dirs["auggen"] = Path(c.auggen) if c.auggen else layout.auggen_dataset_dir(gcfg)
        if not (dirs["auggen"] / MANIFEST).exists():
            if c.auggen:
                _missing_given(dirs["auggen"], "auggen")
            JOBS["auggen_generate"](gcfg)
    return dirs


def data_tag(directories: list[Path]) -> str:
    """8 hex digits naming the content of a setting's input datasets (``fr.data.shards.content_fingerprint``)."""
    return hashlib.sha1("".join(content_fingerprint(d) for d in directories).encode()).hexdigest()[:8]


def run_compare(cfg: FacesynthConfig) -> dict[str, Any]:
    settings = {s: _setting_parts(s) for s in cfg.compare.settings}
    bins = [str(b.resolve()) for b in layout.verify_bins(cfg)]  # the real benchmarks, for every setting
    if not bins:
        raise FileNotFoundError("compare: no verification .bin files (set train_fr.verify_bins)")
    dirs = _source_dirs(cfg, {p for parts in settings.values() for p in parts})
    results: dict[str, Any] = {}
    with mlflow_run(cfg, "compare") as tracker:
        for setting, parts in settings.items():
            key = setting.replace("+", "_")
            tag = data_tag([dirs[p] for p in parts])
            if len(parts) == 1:
                train_dir = dirs[parts[0]]
            else:
                train_dir = layout.dataset_dir(cfg, f"compare_{key}_{tag}")
                merge_datasets([dirs[p] for p in parts], train_dir, cfg.prepare.rows_per_shard,
                               {"compare_setting": setting})
            info = read_dataset_json(train_dir)
            log.info("compare: %s: training FR on %d images of %d identities", setting, info.num_images,
                     info.num_classes)
            seeds = cfg.compare.seeds or [cfg.run.seed]
            per_seed: dict[int, dict[str, float]] = {}
            seconds = 0.0
            for seed in seeds:
                # the same data gives the same name, so finished runs are found again; listed seeds are named
                # apart (a run of another seed is never taken for this one)
                name = f"{cfg.run.name}-cmp-{key}-{tag}" + (f"-s{seed}" if cfg.compare.seeds else "")
                seed_override = [f"run.seed={seed}"] if cfg.compare.seeds else []  # after fr_overrides: it wins
                sub = with_overrides(cfg, [f"run.name={name}", f"train_fr.dataset={train_dir}",
                                           f"train_fr.verify_bins={json.dumps(bins)}", *cfg.compare.fr_overrides,
                                           *seed_override])
                out = JOBS["train_fr"](sub)
                per_seed[seed] = {k: v for k, v in out["metrics"].items() if k.startswith("verify/")}
                seconds += out["seconds"]
            acc = per_seed[seeds[0]] if len(seeds) == 1 else seed_mean_std(per_seed)
            results[setting] = {"dataset": str(train_dir), "images": info.num_images, "classes": info.num_classes,
                                "real_images": real_image_count(train_dir), "train_seconds": seconds,
                                **acc}
            if len(seeds) > 1:
                results[setting]["seeds"] = {str(s): v for s, v in per_seed.items()}
            tracker.metrics({f"{key}/{k}": v for k, v in acc.items()})
        table = format_compare_table(results)
        print(table)
        out_dir = layout.compare_report_dir(cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(results, indent=1))
        (out_dir / "compare.txt").write_text(table + "\n")
        tracker.artifact(out_dir / "compare.json", "compare")
        tracker.artifact(out_dir / "compare.txt", "compare")
    return results
