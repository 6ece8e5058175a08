"""Typed job configuration: dataclasses loaded from YAML presets in ``configs/`` plus ``key=value`` overrides.

Every job reads one :class:`FacesynthConfig`. A preset file holds any subset of its sections; missing
keys keep their defaults. Unknown keys and values of the wrong type are errors that name the key and
list the valid ones.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ray_jobs.config_auggen import AugGenSection
from ray_jobs.config_distill import DistillSection
from ray_jobs.config_gif import GifSection
from ray_jobs.config_pipeline import PipelineSection


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class RunSection:
    name: str = "tiny"  # run name: MLflow run name and the key for resuming a Ray Train run
    output_dir: str = "runs/tiny"  # everything a job writes goes under here
    seed: int = 0


@dataclass
class RaySection:
    address: str = ""  # empty: use RAY_ADDRESS if set, else start a local Ray
    num_cpus: int = 0  # local Ray only; 0 = all cores of the machine
    num_gpus: int = -1  # local Ray only; -1 = autodetect
    task_cpus: float = 0.5  # CPUs per data-preparation task (fractional so tasks never starve a trainer)
    # batch inference (embedding, generation) in the driver instead of Ray Data: auto (when Ray is local and
    # the work is small, ray_jobs.local_path) | always | never
    fast_local: str = "auto"


@dataclass
class MlflowSection:
    tracking_uri: str = ""  # empty: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the working directory
    experiment: str = "facesynth"
    enabled: bool = True


@dataclass
class ToySection:
    num_identities: int = 300  # training identities
    min_images: int = 4
    max_images: int = 40
    tail_exponent: float = 1.0
    verify_identities: int = 200  # held-out identities for the verification .bin
    verify_pairs: int = 3000  # at least 3000, half genuine


@dataclass
class PrepareSection:
    source: str = "toy"  # toy | folder | recordio
    input_path: str = ""  # folder root, or the .rec file (its .idx beside it)
    landmarks_file: str = ""  # folder source: optional JSON {relative path: 10 floats}
    dataset_name: str = "toy"
    image_size: int = 112
    image_format: str = "jpg"
    rows_per_shard: int = 2000
    num_tasks: int = 8  # the input is split into this many Ray tasks (one shard each at least)
    overwrite: bool = False
    toy: ToySection = field(default_factory=ToySection)


@dataclass
class TrainFRSection:
    dataset: str = ""  # shard directory; empty: <run.output_dir>/data/<prepare.dataset_name>/train
    verify_bins: list[str] = field(default_factory=list)  # empty: every .bin in the dataset's verify/ folder
    backbone: str = "iresnet50"  # iresnet18|34|50|100, ir_se50, iresnet_tiny, ir_se_tiny
    backbone_kwargs: dict = field(default_factory=dict)
    embedding_size: int = 512
    margin: str = "arcface"  # arcface | cosface | adaface
    margin_scale: float = 64.0
    margin_m: float = 0.5
    num_virtual: int = 0  # VIGFace virtual prototypes k
    sample_rate: float = 1.0  # partial-FC negative class sampling rate (positives always kept)
    crfiqa: bool = False  # CR-FIQA auxiliary quality head
    crfiqa_weight: float = 10.0
    crfiqa_backbone_grad: bool = False  # True: the quality loss also trains the backbone (CR-FIQA joint training)
    batch_size: int = 512  # global batch over all workers
    epochs: int = 40
    max_steps: int = 0  # > 0: stop after this many steps instead of `epochs`
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"  # step | poly
    lr_milestones: list[float] = field(default_factory=lambda: [24.0, 30.0, 36.0])  # epochs (step schedule)
    warmup_epochs: float = 0.0  # poly schedule
    grad_clip: float = 5.0  # max global grad norm of the backbone; 0 = off
    amp: bool = True  # bf16/fp16 autocast on GPU (ignored on CPU)
    cpu_bf16: bool = False  # bf16 autocast on a CPU with bf16 units (fr.training.autocast_dtype; docs/benchmarks.md)
    augment: bool = True  # VIGFace Appendix A augmentations + flip
    augment_prob: float = 0.2
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 0  # torch DataLoader processes per Ray Train worker
    log_every: int = 20  # steps
    eval_every: int = 0  # steps; 0 = at the end only
    checkpoint_every: int = 200  # steps
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    max_failures: int = 2  # Ray Train worker-group restarts from the latest checkpoint
    fail_at_step: int = 0  # fault-injection for tests: a worker raises once at this step
    head: str = "partial_fc"  # classifier head (fr.head_registry.HEADS): partial_fc | softmax | ...
    head_kwargs: dict = field(default_factory=dict)  # options of that head
    codes: str = ""  # identity-code directory for a head that needs one (GIF: build_codes output)


@dataclass
class TrainDiTSection:
    dataset: str = ""  # shard directory; empty: the train_fr dataset
    prototypes: str = ""  # prototype prefix; empty: <run.output_dir>/fr/<run.name>/prototypes
    fr_backbone: str = ""  # frozen stage-1 backbone prefix for the ID loss; empty: <run.output_dir>/fr/<run.name>/backbone
    size: str = "B"  # tiny | S | B | L | XL
    model_kwargs: dict = field(default_factory=dict)  # DiTConfig overrides (patch_size, image_size, ...)
    batch_size: int = 512  # global
    max_steps: int = 5_000_000
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1+n)/(10+n)) at update n (short runs; generation.ema)
    # learning curve in MLflow: every eval_every steps (and at the end) the EMA DiT samples fixed probe rows
    # (eval_identities real + as many virtual prototypes x 2 images, sample_steps / sample_guidance) and the
    # INDEPENDENT evaluator (evaluate.evaluator, default the train_evaluator export) logs fidelity/*; 0 = off
    eval_every: int = 0
    eval_identities: int = 10
    id_weight: float = 0.1  # weight of ||f_FR(x0_hat) - w||^2; 0 = off
    cond_drop_prob: float = 0.1
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    bf16: bool = True  # autocast on GPU
    cpu_bf16: bool = False  # bf16 autocast on a CPU with bf16 units (fr.training.autocast_dtype; docs/benchmarks.md)
    grad_checkpointing: bool = False
    log_every: int = 50
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    sample_every: int = 20000  # sample grid of fixed real + virtual prototypes across poses; 0 = end only
    sample_identities: int = 4  # per kind (real, virtual) in the grid
    sample_steps: int = 50  # DDIM steps for the sample grid
    sample_guidance: float = 4.0
    loader_workers: int = 0  # torch DataLoader processes per worker (JPEG decoding)
    sample_poses: int = 4
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    max_failures: int = 2
    fail_at_step: int = 0  # fault-injection for tests: a worker raises once at this step


@dataclass
class GenerateSection:
    dit: str = ""  # exported DiT directory; empty: <run.output_dir>/dit/<run.name>
    prototypes: str = ""  # empty: the train_dit prototypes
    landmarks_from: str = ""  # shard directory whose landmark sets condition pose; empty: the train_fr dataset
    # stored image size; 0: the landmark source's (a shard directory's image size; a .npy: the DiT's).
    # A DiT smaller than this (a CPU toy model) has its faces upscaled (bicubic) to it.
    output_size: int = 0
    which: str = "virtual"  # virtual | real | both
    num_identities: int = 0  # per kind; 0 = all prototypes of that kind
    images_per_identity: int = 50
    augment_real_to: int = 0  # > 0: real-ID augmentation, top every real class below this many images up to it
    steps: int = 50
    guidance: float = 4.0
    eta: float = 0.0
    batch_size: int = 64
    num_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 0.5
    rows_per_shard: int = 1000
    dataset_name: str = "vigface_virtual"  # written to <run.output_dir>/data/<dataset_name>/train
    privacy_check: bool = True  # run the identity-leakage check against the real dataset and record the verdict


@dataclass
class EvaluateSection:
    datasets: list[str] = field(default_factory=list)  # shard directories to evaluate; empty: the generate output
    report_name: str = ""  # report folder evaluate/<report_name>; empty: evaluate/<run.name>
    reference: str = ""  # real reference dataset (normalisation + leakage); empty: the train_fr dataset
    evaluator: str = ""  # FR backbone prefix (safetensors + json) used for embeddings; empty: the train_evaluator export
    evaluator_quality: str = ""  # CR-FIQA regressor safetensors for diversity; empty: beside the evaluator if present
    checkpoints: list[str] = field(default_factory=list)  # FR backbones to verify on verify_bins; empty: the train_fr export
    verify_bins: list[str] = field(default_factory=list)  # empty: the toy verify .bin(s)
    leakage_mode: str = "image"  # image | centre
    leakage_quantile: float = 0.99  # real nearest-negative level = this quantile of the real per-class maxima
    # privacy gate: the largest fraction of synthetic identities allowed above the real level. By
    # construction (1 - leakage_quantile) of the real identities themselves lie above that level, so the
    # default asks that synthetic identities be no closer to real people than real people are to each other.
    max_leak_fraction: float = 0.01
    sep_threshold: float = 0.3  # Vec2Face-style unique-identity threshold
    # the privacy gate's rule: binomial = a one-sided binomial test of the leak count against the rate new
    # people give (evaluation.gate_calibration; a set of new people fails with probability <= gate_alpha);
    # fraction = the old rule, leak fraction <= max_leak_fraction (fails a clean set about half the time)
    gate: str = "binomial"
    gate_alpha: float = 0.01
    # train_evaluator: the independent evaluator = train_fr with these overrides (another architecture, margin and
    # seed than stage 1, no virtual prototypes), exported to <output_dir>/fr/<run.name>-evaluator/backbone (the
    # default evaluate.evaluator)
    evaluator_overrides: list[str] = field(default_factory=lambda: [
        "train_fr.backbone=ir_se_tiny", "train_fr.margin=adaface", "train_fr.margin_m=0.4", "train_fr.num_virtual=0",
        "run.seed=1"])
    batch_size: int = 256
    num_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 0.5
    query_chunk: int = 4096
    key_chunk: int = 65536
    cache_embeddings: bool = True  # embeddings cached as shards beside each dataset (keyed by evaluator)


@dataclass
class CompareSection:
    """VIGFace Tables 1-2 at any scale: FR trained on (a) real, (b) virtual-only synthetic,
    (c) real + real-ID augmentation, (d) real + virtual + real-ID augmentation."""

    settings: list[str] = field(default_factory=lambda: ["real", "virtual", "real+realaug", "real+virtual+realaug"])
    real: str = ""  # real shard directory; empty: the train_fr dataset
    virtual: str = ""  # virtual synthetic dataset; empty: generated (if missing) as <virtual_name>
    auggen: str = ""  # AugGen D_aug (part ``auggen``); empty: auggen_generate which=mixed's output (made if missing)
    virtual_name: str = "vigface_virtual_cmp"
    virtual_identities: int = 0  # 0 = every virtual prototype
    virtual_images_per_identity: int = 50
    generate_overrides: list[str] = field(default_factory=list)  # key=value for both synthetic generations
    realaug_name: str = "vigface_realaug"  # dataset name of the real-ID augmentation (generated if missing)
    augment_real_to: int = 50  # real-ID augmentation tops every real class below this up to it
    realaug_overrides: list[str] = field(default_factory=list)  # key=value for the real-ID augmentation only
    report_name: str = ""  # table folder compare/<report_name>; empty: compare/<run.name>
    fr_overrides: list[str] = field(default_factory=list)  # key=value overrides for the four FR runs
    # FR seeds per setting; empty: run.seed once. Several: one run per seed, the row is mean +- std over them
    seeds: list[int] = field(default_factory=list)


@dataclass
class FacesynthConfig:
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)
    mlflow: MlflowSection = field(default_factory=MlflowSection)
    prepare: PrepareSection = field(default_factory=PrepareSection)
    train_fr: TrainFRSection = field(default_factory=TrainFRSection)
    train_dit: TrainDiTSection = field(default_factory=TrainDiTSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    compare: CompareSection = field(default_factory=CompareSection)
    auggen: AugGenSection = field(default_factory=AugGenSection)
    distill: DistillSection = field(default_factory=DistillSection)
    gif: GifSection = field(default_factory=GifSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)


# --------------------------------------------------------------------------------------------
# loading / validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats. Raise ConfigError."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section {tp.__name__}), got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(prefix + '.' + k if prefix else k) for k in unknown)} "
            f"in {where}; valid keys: {', '.join(names)}"
        )
    obj = cls()
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            # merge into the existing section so partial sections keep defaults
            merged = _merge(dataclasses.asdict(current), value)
            setattr(obj, name, _build(hints[name], merged, key))
        else:
            setattr(obj, name, _coerce(value, hints[name], key))
    return obj


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from exc
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: dict = {}
    cur = out
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                cls: type = FacesynthConfig) -> Any:
    """Load a preset YAML (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            presets = sorted(x.stem for x in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
            raise ConfigError(f"config file {str(p)!r} not found; presets in configs/: {', '.join(presets)}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        data = _merge(data, _nest(keys, value))
    return _build(cls, data)


def with_overrides(cfg: Any, overrides: typing.Sequence[str]) -> Any:
    """A copy of ``cfg`` with ``key=value`` overrides applied (same checks as on the command line)."""
    data = to_dict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        data = _merge(data, _nest(keys, value))
    return _build(type(cfg), data)


def from_dict(data: dict, cls: type = FacesynthConfig) -> Any:
    """Rebuild a config from :func:`to_dict` output (e.g. inside a Ray worker)."""
    return _build(cls, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
