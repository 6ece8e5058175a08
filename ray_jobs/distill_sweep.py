"""``distill_sweep``: Ray Tune over SynthDistill's re-sampling coefficient c and sampling mode (Tables 4 and 6).

One driver function trainable per trial (a tiny CPU share) runs the ``distill`` job (through
``ray_jobs.jobs.JOBS``) on the trial's config, which builds and fits its own TorchTrainer; the trial
reports the student's verification accuracy. MLflow: a parent run (results table, accuracy-vs-c plot)
with one nested run per trial: the trial's own ``distill`` run (its config as params, so ``distill.mode``,
``distill.c`` and ``run.seed``; losses, agreement, accuracies, grids), opened under the parent with
``tracking.nested_under``. Tune's ``MLflowLoggerCallback`` is not used here: it would add a second,
metrics-only run per trial beside the distill run. Results in ``layout.report_dir(cfg, "distill_sweep")``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.report import accuracy_vs_c_png, results_markdown
from distill.resampling import check_mode
from ray_jobs import layout
from ray_jobs.cluster import init_ray
from ray_jobs.config import FacesynthConfig, from_dict, to_dict, with_overrides
from ray_jobs.tracking import mlflow_run, nested_under, tracking_uri
from ray_jobs.train_common import absolute_uri

log = logging.getLogger(__name__)
JOB = "distill_sweep"


def trial_overrides(cfg: FacesynthConfig, mode: str, c: float, seed: int) -> list[str]:
    # a trial is renamed, so the sweep's teacher (by default the stage-1 export of the sweep's run.name) is pinned
    teacher = cfg.distill.teacher or str(layout.fr_backbone_prefix(cfg).resolve())
    return [*cfg.distill.sweep.overrides, f"distill.mode={mode}", f"distill.c={c}", f"run.seed={seed}",
            f"distill.teacher={teacher}", f"run.name={cfg.run.name}-{mode}-c{c:g}-s{seed}"]


def absolute_paths(cfg: FacesynthConfig) -> FacesynthConfig:
    """``cfg`` with its file paths made absolute on the driver: a Tune trial runs in its own working
    directory, where a relative ``runs/...`` or ``sqlite:///mlflow.db`` would name another (empty) one."""
    d = cfg.distill
    paths = {"run.output_dir": cfg.run.output_dir, "distill.teacher": d.teacher,
             "distill.student_checkpoint": d.student_checkpoint}
    if d.generator != "toy":
        paths["distill.generator"] = d.generator
    out = [f"{k}={Path(v).resolve()}" for k, v in paths.items() if v]
    out.append(f"mlflow.tracking_uri={absolute_uri(tracking_uri(cfg))}")
    if d.verify_bins:
        out.append(f"distill.verify_bins=[{', '.join(str(Path(b).resolve()) for b in d.verify_bins)}]")
    return with_overrides(cfg, out)


def distill_trial(config: dict, base: dict, parent_run_id: str | None = None) -> None:
    """Tune driver trainable: the distill job on this trial's config (its MLflow run nested under the
    sweep's ``parent_run_id``); reports the student's metrics."""
    from ray import tune

    from ray_jobs.jobs import JOBS

    cfg = with_overrides(from_dict(base), trial_overrides(from_dict(base), config["mode"], config["c"], config["seed"]))
    with nested_under(parent_run_id):
        out = JOBS["distill"](cfg)
    summary = out["summary"] if isinstance(out, dict) else {}
    tune.report({k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})


def run_distill_sweep(cfg: FacesynthConfig) -> dict[str, Any]:
    import ray
    from ray import tune

    s = cfg.distill.sweep
    for m in s.modes:
        check_mode(m, "distill.sweep.modes")
    if not s.cs or any(c <= 0 for c in s.cs) or not s.seeds:
        raise ValueError(f"distill.sweep needs cs > 0 and at least one seed, got cs {s.cs}, seeds {s.seeds}")
    d = with_overrides(cfg, trial_overrides(cfg, s.modes[0], s.cs[0], s.seeds[0])).distill  # bad overrides fail here
    cfg = absolute_paths(cfg)
    init_ray(cfg.ray)
    need = s.max_concurrent * (d.num_workers * d.cpus_per_worker + s.driver_cpus)
    have = ray.cluster_resources().get("CPU", 0)
    if need > have:
        raise ValueError(f"distill_sweep: {s.max_concurrent} concurrent trial(s) need {need:g} CPUs "
                         f"(distill.num_workers x distill.cpus_per_worker + distill.sweep.driver_cpus each), the "
                         f"cluster has {have:g}: lower distill.cpus_per_worker or distill.sweep.max_concurrent")
    out = layout.report_dir(cfg, JOB).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = f"{cfg.run.name}-{JOB}"
    with mlflow_run(cfg, JOB) as tracker:
        trainable = tune.with_resources(tune.with_parameters(distill_trial, base=to_dict(cfg),
                                                             parent_run_id=tracker.run_id), {"cpu": s.driver_cpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"mode": tune.grid_search(list(s.modes)), "c": tune.grid_search([float(c) for c in s.cs]),
                         "seed": tune.grid_search([int(x) for x in s.seeds])},
            tune_config=tune.TuneConfig(max_concurrent_trials=s.max_concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(layout.ray_storage(cfg))))
        grid = tuner.fit()
        results = [{"mode": r.config["mode"], "c": r.config["c"], "seed": r.config["seed"], **r.metrics}
                   for r in grid if r.error is None and r.metrics]
        failed = len(grid) - len(results)
        if not results:
            raise RuntimeError(f"distill_sweep: no trial finished ({failed} failed); see {layout.ray_storage(cfg) / name}")
        metric = next((k for k in results[0] if k.startswith("student_") and k.endswith("_accuracy")), None)
        teacher = results[0].get(metric.replace("student_", "teacher_")) if metric else None
        table = results_markdown(results, metric, teacher, f"\n{failed} trial(s) failed" if failed else "")
        (out / "results.md").write_text(table)
        (out / "results.json").write_text(json.dumps({"metric": metric, "results": results}, indent=1, default=str))
        png = accuracy_vs_c_png(results, metric, out / "accuracy_vs_c.png", teacher)
        for p in (out / "results.md", out / "results.json", png):
            tracker.artifact(p, JOB)
        if metric:
            best = max(results, key=lambda r: r[metric])
            tracker.metrics({f"best_{metric}": best[metric], "best_c": best["c"], "trials": len(results),
                             "failed_trials": failed})
            tracker.tags({"best_mode": str(best["mode"])})
        log.info("distill_sweep: %d trials, %d failed\n%s", len(results), failed, table)
        return {"results": results, "report_dir": out, "metric": metric, "failed": failed}
