"""Config section of SynthDistill (distill, distill_sweep); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DistillSweepSection:
    cs: list[float] = field(default_factory=lambda: [0.8, 1.0, 1.2, 1.5])  # Table 6 grid of the coefficient c
    modes: list[str] = field(default_factory=lambda: ["dynamic_w"])  # Table 4: static | static_2x | dynamic_z | dynamic_w
    seeds: list[int] = field(default_factory=lambda: [0])  # run.seed of each trial (repeats)
    max_concurrent: int = 1  # trials at once (each holds distill.num_workers x distill.cpus_per_worker CPUs)
    driver_cpus: float = 0.05  # the per-trial driver trainable's CPU share
    overrides: list[str] = field(default_factory=list)  # key=value applied to every trial (e.g. shorter runs)


@dataclass
class DistillSection:
    # generator: "toy" (the built-in renderer of new people), a StyleGAN2 directory/safetensors converted by
    # distill.stylegan2_convert, or a diffusion model directory (VIGFace DiT, AugGen EDM2)
    generator: str = "toy"
    generator_kind: str = "auto"  # auto | toy | stylegan2 | diffusion
    toy_w_scale: float = 2.0  # toy W = toy_w_scale * Z
    toy_render_size: int = 112  # the toy renderer's side before the resize to 112
    stylegan2_psi: float = 1.0  # truncation (the paper: 1.0)
    stylegan2_noise_mode: str = "random"  # random | const | none
    diffusion_steps: int = 25
    diffusion_guidance: float = 2.0
    # teacher: empty = the stage-1 FR export (layout.fr_backbone_prefix); an export prefix, an insightface
    # .pth (teacher_arch, e.g. iresnet100) or an .onnx (needs onnxruntime)
    teacher: str = ""
    teacher_arch: str = ""
    student: str = "c"  # TinyFaR-A | B | C
    student_input_size: int = 112  # < 112: a smaller toy variant (named TinyFaR-X@<size>px)
    student_checkpoint: str = ""  # a local timm checkpoint of the trunk (none: random init; no download)
    embedding_size: int = 512  # the student's head; must equal the teacher's
    mode: str = "dynamic_w"  # static | static_2x | dynamic_z | dynamic_w (Table 4)
    c: float = 1.0  # re-sampling coefficient (eq. 3)
    batch_size: int = 128  # global batch (split over the workers)
    iterations_per_epoch: int = 7813  # the paper: 1M fresh images per epoch at batch 128
    epochs: int = 40
    lr: float = 1.0e-3  # Adam
    lr_step_epochs: int = 10  # StepLR step size (epochs)
    lr_gamma: float = 0.5
    max_nonfinite: int = 5
    verify_bins: list[str] = field(default_factory=list)  # empty: layout.verify_bins (the toy pairs)
    eval_every: int = 0  # steps between verifications of the student (0: at the end only)
    num_workers: int = 1
    cpus_per_worker: float = 2.0
    # step 1's fresh batches: made in the worker, or by Ray Data actors streaming into it (ray_data: leave them
    # CPUs, e.g. cpus_per_worker 1.5 + one 0.5-CPU actor on 2 cores; checked before the run)
    step1_source: str = "worker"  # worker | ray_data
    stream_actors: int = 1  # Ray Data actors per worker (each holds a generator and a teacher)
    stream_cpus_per_actor: float = 0.5
    stream_gpus_per_actor: float = 0.0  # > 0: the actors generate and embed on a GPU
    stream_threads: int = 1  # torch threads in each actor
    stream_prefetch: int = 2  # step-1 batches each worker prefetches
    # torch threads of each Train worker; 0 = Ray's (int(cpus_per_worker)): with a fractional share beside
    # the stream actors (1.5 on 2 CPUs) Ray gives 1, and a second thread can use the core the actors leave idle
    worker_threads: int = 0
    use_gpu: bool = False
    max_failures: int = 0
    keep_checkpoints: int = 1
    log_every: int = 10
    checkpoint_every: int = 100
    fail_at_step: int = 0  # tests: rank 0 fails once at this step
    sample_grid: int = 8  # faces in the step-1 / re-sampled grid logged at the end (0: none)
    sweep: DistillSweepSection = field(default_factory=DistillSweepSection)
