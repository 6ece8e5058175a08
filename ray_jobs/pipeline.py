"""``pipeline``: every method's stages on one config, sharing what they can (one toy dataset, one stage-1 FR
model that is VIGFace's stage 1, SynthDistill's teacher and AugGen's M_orig), then one summary.

- ``pipeline.methods`` picks a subset of vigface / auggen / synthdistill / gif (shared stages always run).
- ``pipeline.stage_overrides`` (``{stage: [key=value, ...]}``) are applied on top of the whole config for that
  stage only, so inside the pipeline they win over the same key given on the command line: change a stage's
  budget there (or set ``pipeline.stage_overrides={}`` to run every stage with the sections as given).
- Resume: each finished stage is recorded in ``<output_dir>/pipeline/<run.name>/state.json`` with its result
  and a fingerprint of its config; a rerun skips finished stages whose config is unchanged and reruns the
  rest, where every job resumes what it had (Ray Train checkpoints, finished shards, Tune trials).
- Progress: a line per stage (n/N, elapsed, ETA from ``pipeline.estimates_s`` rescaled by the stages so far).
- Summary: ``summary.{md,json}`` beside ``state.json``, the terminal, and an MLflow run ``pipeline``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluation.pipeline_summary import (SummaryRow, format_stage_times, format_summary, privacy_label,
                                         summary_json, verification_figures)
from evaluation.report import json_safe
from fr.data.shards import MANIFEST, DatasetInfo, read_dataset_json
from ray_jobs import layout
from ray_jobs.config import ConfigError, FacesynthConfig, to_dict, with_overrides
from ray_jobs.config_pipeline import METHODS
from ray_jobs.jobs import JOBS
from ray_jobs.tracking import mlflow_run

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
DEFAULT_ESTIMATE_S = 60.0
FR_KEY = "verify/{bench}/{metric}"
COMPARE_PART_METHOD = {"virtual": "VIGFace", "realaug": "VIGFace", "auggen": "AugGen"}
PART_METHOD = {"virtual": "vigface", "realaug": "vigface", "auggen": "auggen", "real": "shared"}


@dataclass(frozen=True)
class Stage:
    name: str
    method: str  # "shared" or one of METHODS
    job: str
    overrides: Callable[[FacesynthConfig], list[str]] = lambda cfg: []
    # the config sections whose values the stage's result depends on (its resume fingerprint); () = all but
    # the ones no result depends on (ray resources, the MLflow store, the pipeline section itself)
    reads: tuple[str, ...] = ()


def _compare_settings(cfg: FacesynthConfig) -> list[str]:
    """compare.settings restricted to the selected methods, plus AugGen's real + D_aug when AugGen runs."""
    chosen = set(cfg.pipeline.methods) | {"shared"}
    settings = [s for s in cfg.compare.settings if all(PART_METHOD.get(p, "shared") in chosen for p in s.split("+"))]
    if "auggen" in chosen and "real+auggen" not in settings:
        settings.append("real+auggen")
    return settings


def compare_overrides(cfg: FacesynthConfig) -> list[str]:
    return [f"compare.settings={json.dumps(_compare_settings(cfg))}"]


def gif_fr_overrides(cfg: FacesynthConfig) -> list[str]:
    """The GIF FR run: compare's FR recipe with the token head, on the real data, as run ``<name>-gif``."""
    return [*cfg.compare.fr_overrides, f"train_fr.codes={layout.model_dir(cfg, 'codes').resolve()}",
            *cfg.pipeline.gif_fr_overrides, f"run.name={cfg.run.name}-gif"]


FR = ("run", "prepare", "train_fr")
STAGES = [
    Stage("prepare", "shared", "prepare", reads=("run", "prepare")),
    Stage("train_fr", "shared", "train_fr", reads=FR),
    Stage("train_evaluator", "shared", "train_evaluator", reads=(*FR, "evaluate")),  # the independent evaluator
    Stage("train_dit", "vigface", "train_dit", reads=(*FR, "train_dit")),
    Stage("generate", "vigface", "generate", reads=(*FR, "train_dit", "generate", "evaluate")),
    Stage("train_auggen", "auggen", "train_auggen", reads=("run", "prepare", "auggen")),
    Stage("auggen_search", "auggen", "auggen_search", reads=(*FR, "auggen")),
    Stage("auggen_generate", "auggen", "auggen_generate", lambda cfg: ["auggen.generate.which=mixed"],
          reads=(*FR, "auggen")),
    Stage("build_codes", "gif", "build_codes", reads=(*FR, "gif")),
    Stage("gif_train_fr", "gif", "train_fr", gif_fr_overrides, reads=(*FR, "gif", "compare")),
    Stage("distill", "synthdistill", "distill", reads=(*FR, "distill")),
    Stage("compare", "shared", "compare", compare_overrides),
    Stage("evaluate", "vigface", "evaluate"),
]
NO_RESULT_SECTIONS = ("ray", "mlflow", "pipeline")


def selected_stages(cfg: FacesynthConfig) -> list[Stage]:
    unknown = [m for m in cfg.pipeline.methods if m not in METHODS]
    if unknown or not cfg.pipeline.methods:
        raise ConfigError(f"pipeline.methods: unknown {unknown}; choose from {list(METHODS)}"
                          if unknown else f"pipeline.methods is empty; choose from {list(METHODS)}")
    bad = [k for k in cfg.pipeline.stage_overrides if k not in {s.name for s in STAGES}]
    if bad:
        raise ConfigError(f"pipeline.stage_overrides: unknown stage(s) {bad}; stages: {[s.name for s in STAGES]}")
    return [s for s in STAGES if (s.method == "shared" or s.method in cfg.pipeline.methods) and s.job in JOBS]


def stage_config(cfg: FacesynthConfig, stage: Stage) -> tuple[FacesynthConfig, list[str]]:
    """The stage's config: the pipeline's, plus the stage's own overrides, plus the user's per-stage budget."""
    extra = [*stage.overrides(cfg), *cfg.pipeline.stage_overrides.get(stage.name, [])]
    return with_overrides(cfg, extra), list(cfg.pipeline.stage_overrides.get(stage.name, []))


def fingerprint(cfg: FacesynthConfig, reads: tuple[str, ...] = ()) -> str:
    data = {k: v for k, v in to_dict(cfg).items() if (k in reads if reads else k not in NO_RESULT_SECTIONS)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _record(value: Any, depth: int = 0) -> Any:
    """What the summary needs of a job's result, JSON-safe and small (no identity lists)."""
    if isinstance(value, DatasetInfo):
        return {"num_images": value.num_images, "num_classes": value.num_classes, "extra": _record(value.extra)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _record(dataclasses.asdict(value), depth)
    if isinstance(value, dict):
        return {str(k): _record(v, depth + 1) for k, v in value.items()
                if depth < 4 and not (isinstance(v, (list, tuple)) and len(v) > 64)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_record(v, depth + 1) for v in value]
    return json_safe(value) if isinstance(value, (int, float, str, bool, type(None))) or hasattr(value, "item") \
        else str(value)


# ------------------------------------------------------------------------------------------------
# the state file


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); move it away to start the pipeline's record afresh "
                          f"(every job still resumes its own work)") from exc


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)  # atomic: a kill never leaves half a record


# ------------------------------------------------------------------------------------------------
# progress


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def eta_seconds(estimates: dict[str, float], done_here: dict[str, float], remaining: list[str]) -> float:
    """Remaining stages' estimates, scaled by (actual / estimated) of the stages that ran in this process."""
    est = lambda name: float(estimates.get(name, DEFAULT_ESTIMATE_S))  # noqa: E731
    scale = 1.0
    if done_here:
        scale = min(5.0, max(0.2, sum(done_here.values()) / max(1e-6, sum(est(n) for n in done_here))))
    return scale * sum(est(n) for n in remaining)


def _say(text: str) -> None:
    print(f"[pipeline] {text}", flush=True)
    log.debug(text)


# ------------------------------------------------------------------------------------------------
# the run


def pipeline(cfg: FacesynthConfig) -> dict[str, Any]:
    stages = selected_stages(cfg)
    out_dir = layout.pipeline_report_dir(cfg)
    state_path = out_dir / STATE_FILE
    state = load_state(state_path)
    start = time.monotonic()
    ran_here: dict[str, float] = {}
    _say(f"{len(stages)} stages for {', '.join(cfg.pipeline.methods)}; record: {state_path}")
    for i, stage in enumerate(stages, 1):
        scfg, budget = stage_config(cfg, stage)
        fp = fingerprint(scfg, stage.reads)
        rec = state["stages"].get(stage.name, {})
        eta = eta_seconds(cfg.pipeline.estimates_s, ran_here, [s.name for s in stages[i - 1:]])
        head = f"stage {i}/{len(stages)} {stage.name} ({stage.method})"
        if rec.get("status") == "done" and rec.get("fingerprint") == fp:
            _say(f"{head}: done earlier in {_clock(rec.get('seconds', 0))}, skipped")
            continue
        if rec.get("status") == "done":
            _say(f"{head}: its config changed since it ran: running it again (the job reuses what it can)")
        _say(f"{head}: starting; elapsed {_clock(time.monotonic() - start)}, ETA {_clock(eta)}"
             + (f"; pipeline budget: {' '.join(budget)}" if budget else ""))
        t0 = time.monotonic()
        rec = {**rec, "status": "running", "fingerprint": fp, "job": stage.job, "method": stage.method,
               "budget": budget}
        state["stages"][stage.name] = rec
        save_state(state_path, state)
        try:
            result = JOBS[stage.job](scfg)
        finally:
            spent = time.monotonic() - t0
            rec["seconds_all_attempts"] = rec.get("seconds_all_attempts", 0.0) + spent
            save_state(state_path, state)
        rec.update(status="done", seconds=spent, result=_record(result), finished=time.time())
        save_state(state_path, state)
        ran_here[stage.name] = spent
        _say(f"{head}: done in {_clock(spent)}")
    summary = write_summary(cfg, stages, state, ran_here)
    _say(f"all {len(stages)} stages done in {_clock(time.monotonic() - start)} (this run)")
    return summary


# ------------------------------------------------------------------------------------------------
# the summary


def _preset(cfg: FacesynthConfig, state: dict[str, Any], stage: str) -> str:
    budget = state["stages"].get(stage, {}).get("budget") or []
    return f"{cfg.run.name}" + (f" + {' '.join(budget)}" if budget else "")


def _fr_model(overrides: list[str], cfg: FacesynthConfig, head: str = "") -> str:
    fr = with_overrides(cfg, [o for o in overrides if o.startswith("train_fr.")]).train_fr
    return f"FR {fr.backbone}, {fr.margin}, {head or fr.head}" + (f", {fr.num_virtual} virtual" if fr.num_virtual else "")


def _virtual_verdict(dataset: str) -> dict[str, Any] | None:
    path = Path(dataset)
    if not (path / MANIFEST).is_file():
        return None
    return read_dataset_json(path).extra.get("privacy")


def summary_rows(cfg: FacesynthConfig, state: dict[str, Any]) -> list[SummaryRow]:
    st = {k: v.get("result") or {} for k, v in state["stages"].items() if v.get("status") == "done"}
    secs = {k: v.get("seconds", math.nan) for k, v in state["stages"].items()}
    real = st.get("prepare", {})
    rows: list[SummaryRow] = []

    def fr_row(stage: str, method: str, model: str, data: str, preset_stage: str | None = None) -> None:
        res = st.get(stage)
        if not res:
            return
        figs = verification_figures(res.get("metrics", {}), FR_KEY)
        rows.append(SummaryRow(method, model, data, _preset(cfg, state, preset_stage or stage),
                               real.get("num_images"), real.get("num_classes"), privacy=privacy_label(["real"]),
                               seconds=secs.get(stage, math.nan), **figs))

    fr_row("train_fr", "VIGFace stage 1 (shared)", _fr_model([], cfg), "real toy set")
    if "train_evaluator" in st:
        fr_row("train_evaluator", "independent evaluator", "FR (evaluator recipe)", "real toy set")
    for setting, res in (st.get("compare") or {}).items():
        if not isinstance(res, dict) or "classes" not in res:
            continue
        parts = setting.split("+")
        method = next((COMPARE_PART_METHOD[p] for p in parts if p in COMPARE_PART_METHOD), "baseline (real)")
        verdict = _virtual_verdict(res.get("dataset", "")) if parts == ["virtual"] else None
        rows.append(SummaryRow(method, _fr_model(cfg.compare.fr_overrides, cfg), setting,
                               _preset(cfg, state, "compare"), res.get("real_images"), res.get("classes"),
                               privacy=privacy_label(parts, verdict), seconds=res.get("train_seconds", math.nan),
                               **verification_figures(res, FR_KEY)))
    if "gif_train_fr" in st:
        fr_row("gif_train_fr", "GIF", _fr_model([*cfg.compare.fr_overrides, *cfg.pipeline.gif_fr_overrides], cfg,
                                                 f"token head l={cfg.gif.code_length} K={cfg.gif.vocab_size}"),
               "real toy set")
    if "distill" in st:
        s = st["distill"].get("summary", {})
        rows.append(SummaryRow("SynthDistill", f"student {s.get('student', '?')} <- teacher {s.get('teacher', '?')}",
                               f"{s.get('images_seen', '?')} faces from the {s.get('generator', '?')} generator "
                               f"({s.get('mode', '?')}, c={s.get('c', '?')})", _preset(cfg, state, "distill"), 0, None,
                               privacy=privacy_label(["generated"]), seconds=s.get("train_seconds", math.nan),
                               **verification_figures(s, "student_{bench}_{metric}")))
    return rows


def floor_row(cfg: FacesynthConfig) -> SummaryRow | None:
    """Raw-pixel cosine on the first verification .bin: the floor every FR model must beat."""
    from evaluation.verification import raw_pixel_floor

    bins = layout.verify_bins(cfg)
    if not bins:
        return None
    f = raw_pixel_floor(bins[0])
    return SummaryRow("floor", "raw pixels (no training)", "-", "-", None, None, bins[0].stem,
                      f["raw_pixel_accuracy"], f["raw_pixel_accuracy_std"], privacy="-", seconds=math.nan)


def write_summary(cfg: FacesynthConfig, stages: list[Stage], state: dict[str, Any],
                  ran_here: dict[str, float]) -> dict[str, Any]:
    rows = summary_rows(cfg, state)
    floor = floor_row(cfg)
    if floor:
        rows.append(floor)
    timing = [{"name": s.name, "method": s.method, "seconds": state["stages"][s.name].get("seconds", 0.0),
               "how": "ran" if s.name in ran_here else "done earlier"} for s in stages]
    table, times = format_summary(rows), format_stage_times(timing)
    out_dir = layout.pipeline_report_dir(cfg)
    text = (f"# Pipeline summary: {cfg.run.name} ({', '.join(cfg.pipeline.methods)})\n\n{table}\n\n"
            f"Accuracy: 10-fold verification on the held-out pairs (+- std over the folds); real images: distinct "
            f"real images in the training data (the SynthDistill student saw none; its teacher is the stage-1 "
            f"model).\n\n## Wall time per stage\n\n{times}\n")
    (out_dir / "summary.md").write_text(text)
    payload = {"rows": summary_json(rows), "stages": timing, "methods": list(cfg.pipeline.methods)}
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=1))
    print("\n" + text, file=sys.stdout, flush=True)
    with mlflow_run(cfg, "pipeline") as tracker:
        tracker.tags({"pipeline.methods": ",".join(cfg.pipeline.methods)})
        metrics = {}
        for i, r in enumerate(rows):
            slug = f"{i:02d}_{r.method.split(' ')[0]}_{r.data}".replace("+", "_").replace(" ", "_")[:48]
            for key in ("accuracy", "accuracy_std", "tar_at_far", "seconds"):
                value = getattr(r, key)
                if isinstance(value, float) and math.isfinite(value):
                    metrics[f"{slug}/{key}"] = value
        metrics.update({f"stage_seconds/{t['name']}": t["seconds"] for t in timing})
        tracker.metrics(metrics)
        tracker.artifact(out_dir / "summary.md", "summary")
        tracker.artifact(out_dir / "summary.json", "summary")
    return payload
