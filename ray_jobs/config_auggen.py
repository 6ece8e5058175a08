"""Config section of AugGen (train_auggen, auggen_generate, auggen_search); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AugGenTrainSection:
    dataset: str = ""  # shard directory of D_orig; empty: the real training data (layout.real_dataset_dir)
    size: str = "s"  # tiny | xs | s (generation.edm2_unet.EDM2_PRESETS)
    model_kwargs: dict = field(default_factory=dict)  # EDM2Config overrides (image_size, model_channels, ...)
    batch_size: int = 256  # global
    max_steps: int = 200_000
    ref_lr: float = 1.0e-2  # EDM2: lr = ref_lr / sqrt(max(t / ref_steps, 1)) after the ramp-up
    ref_steps: int = 35_000
    rampup_steps: int = 1_000
    p_mean: float = -0.8
    p_std: float = 1.6
    label_dropout: float = 0.1  # CFG training; 0 = no unconditional branch
    # "" = EDM2's one-hot label embedding; "stage1" = a fixed class basis from this run's train_fr prototypes
    # (M_orig, trained on the same data), or a prototypes prefix: generation.edm2_label_basis (our addition)
    label_basis: str = ""
    ema_stds: list[float] = field(default_factory=lambda: [0.05, 0.10])  # power-function EMA profiles
    export_std: float = 0.10  # EMA width of the exported model (reconstructed post hoc if not a profile)
    snapshot_every: int = 4_000  # EMA snapshots for the post-hoc reconstruction; 0 = none (export a profile)
    hflip: bool = True  # horizontal-flip augmentation
    max_grad_norm: float = 0.0  # 0 = no clipping (EDM2 uses none)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    bf16: bool = True  # autocast on GPU
    # bf16 autocast on the CPU too (our addition): 1.48-1.50x the fp32 step on an AVX512-BF16 CPU (docs/benchmarks.md)
    cpu_bf16: bool = False
    loader_workers: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    sample_every: int = 20_000  # sample grid of fixed classes; 0 = end only
    sample_classes: int = 8
    sample_per_class: int = 6
    sample_steps: int = 32
    sample_guidance: float = 1.0
    max_nonfinite: int = 5
    max_failures: int = 2
    fail_at_step: int = 0  # fault injection for tests


@dataclass
class AugGenGenerateSection:
    which: str = "mixed"  # repro (one-hot training classes -> D_repro) | mixed (new classes -> D_aug)
    model: str = ""  # exported generator; empty: <run.output_dir>/auggen/<run.name>
    dataset_name: str = ""  # empty: auggen_repro / auggen_mixed
    output_size: int = 112  # stored face size (a smaller generator's faces are upscaled)
    num_classes: int = 0  # repro: training classes to regenerate (0 = all)
    images_per_class: int = 10  # repro: per class; mixed: M images per new class
    num_new_classes: int = 1000  # mixed: N new classes
    alpha: float = 0.0  # mixed: 0 = the best pair from auggen_search's best.json
    beta: float = 0.0
    steps: int = 32
    guidance: float = 1.0
    batch_size: int = 64
    rows_per_shard: int = 1000
    image_format: str = "jpg"
    use_gpu: bool = False
    num_actors: int = 1  # Ray actors sampling shards (each loads the generator once)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # with use_gpu
    evaluator: str = ""  # repro: FR backbone prefix for the top-1 check; empty: evaluate.evaluator, else the train_fr export
    evaluate: bool = True  # repro: run the evaluate job on D_repro (properties + leakage vs the training set)


@dataclass
class AugGenSearchSection:
    alphas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 12)])
    betas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 12)])
    num_pairs: int = 32  # K random pairs of distinct classes (the same pairs at every grid point)
    images_per_pair: int = 8  # M images per mixed class
    fr_backbone: str = ""  # M_orig; empty: <run.output_dir>/fr/<run.name>/backbone
    steps: int = 32
    guidance: float = 1.0
    batch_size: int = 64
    cpus_per_trial: float = 0.5
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    num_threads: int = 1  # torch threads per trial
    report_name: str = ""  # names this search's report folder and Tune experiment; empty: run.name
    fail_at_alpha: float = 0.0  # fault injection for tests: trials at this alpha raise once (marker in the report dir)


@dataclass
class AugGenSection:
    train: AugGenTrainSection = field(default_factory=AugGenTrainSection)
    generate: AugGenGenerateSection = field(default_factory=AugGenGenerateSection)
    search: AugGenSearchSection = field(default_factory=AugGenSearchSection)

    @property
    def use_gpu(self) -> bool:
        """What ``ray_jobs.train_common.worker_context(..., "auggen")`` reads to pick the worker's device."""
        return self.train.use_gpu
