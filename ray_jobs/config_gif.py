"""Config section of GIF identity codes (build_codes); part of :class:`ray_jobs.config.FacesynthConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GifOptimiseSection:
    """Hypersphere homogenisation (``fr.gif.homogenise.HomogeniseConfig``, eq. H1-H3)."""

    epochs: float = 30.0  # anchor passes over the identities
    steps: int = 0  # > 0: this many steps instead of epochs
    batch: int = 1024  # anchors per step
    neighbours: int = 10  # k initial neighbours whose order is kept (H3)
    partners: int = 32  # m random partners per anchor (H2)
    t: float = 2.0  # uniformity temperature
    mu: float = 10.0  # weight of the order term
    delta: float = 0.0  # rank hinge margin
    lr: float = 0.003
    log_every: int = 200
    exact_knn_max: int = 200_000  # above: neighbours within LSH blocks
    knn_block: int = 4096


@dataclass
class GifSection:
    dataset: str = ""  # shard directory; empty: the train_fr dataset
    source: str = "pixels"  # pixels (offline, class-mean thumbnails + PCA) | embedder (class means) | file
    features: str = ""  # source=file: .safetensors (tensor 'features') or .npy of per-identity features
    features_identities: str = ""  # identity list (.txt / .json) for .npy (or safetensors without metadata)
    embedder: str = ""  # source=embedder: our backbone export prefix, or an insightface .pth; empty: the run's train_fr export
    embedder_arch: str = ""  # the architecture of a .pth (e.g. iresnet100)
    embedder_flip: bool = True
    pixel_size: int = 16  # source=pixels: thumbnail side
    pixel_dim: int = 64  # source=pixels: PCA components
    code_length: int = 3  # l tokens per identity
    vocab_size: int = 8  # K tokens per level (K^l >= identities)
    homogenise: bool = True  # false: cluster the initial vectors directly (ablation)
    device: str = "auto"  # homogenisation device: auto | cpu | cuda
    batch_rows: int = 256  # images decoded per batch in the per-shard pass
    gpus_per_task: float = 0.0  # source=embedder: GPU share of each shard task
    local_pass: bool = False  # true: featurise the shards in the driver, no Ray (small sets, a busy laptop)
    kmeans_sample: int = 20000  # rows a k-means of one tree node is fitted on
    spread_sample: int = 2048  # identities sampled for the spread / order statistics
    seed: int = 0
    overwrite: bool = False
    optimise: GifOptimiseSection = field(default_factory=GifOptimiseSection)
    # minority collapse (job gif_collapse): the backbone to measure and the class-size bins
    collapse_backbone: str = ""  # backbone export prefix; empty: <output_dir>/fr/<run.name>/backbone
    collapse_bins: int = 4  # class-size quantile bins (tail ... head)
    # more backbones measured on the same data and drawn in the same figure, {name: export prefix}
    # (e.g. {softmax: runs/x/fr/softmax/backbone} beside a GIF-head backbone)
    collapse_compare: dict = field(default_factory=dict)
