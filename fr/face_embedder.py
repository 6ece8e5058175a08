"""The face embedder: "an FR model as a function", loaded from our exports or insightface ``.pth`` files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from fr.backbones import BackboneMismatchError, build_backbone, load_backbone, load_insightface_pth, load_state_dict_strict
from fr.crfiqa import QualityHead
from fr.data.images import to_model_input


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def images_to_tensor(images) -> torch.Tensor:
    """RGB uint8 images (list of (H, W, 3) or array [B, H, W, 3]) -> float32 [B, 3, H, W] in
    (x - 127.5) / 128, the input normalisation of the insightface/arcface_torch backbones."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 images [B, H, W, 3] of equal size, got {arr.dtype} {arr.shape}")
    return to_model_input(arr)


class EmbedderMismatchError(ValueError):
    """The evaluator FR model does not fit the data (input size, embedding size, quality head)."""


class FaceEmbedder:
    """An FR model as a function: a frozen backbone (eval mode), its input normalisation
    ((x - 127.5) / 128 on RGB, insightface's), the flip test and an optional CR-FIQA quality head.

    Used by evaluation, the privacy gate, AugGen's metric and SynthDistill's teacher. ``embed`` takes
    uint8 faces and returns unit embeddings (+ FIQA); ``embed_unit`` takes float faces in [0, 1] as
    tensors (a generator's output) and returns raw embeddings, with no gradient (a black box).
    """

    def __init__(self, backbone: nn.Module, quality: QualityHead | None = None, flip: bool = True,
                 device: str | torch.device = "cpu", name: str = "evaluator"):
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.quality = None if quality is None else quality.to(self.device).eval()
        self.flip = bool(flip)
        self.name = name
        if self.quality is not None and self.quality.embedding_size != self.embedding_size:
            raise EmbedderMismatchError(
                f"{name}: quality head expects {self.quality.embedding_size}-d embeddings, "
                f"the backbone gives {self.embedding_size}-d")

    @property
    def input_size(self) -> int:
        return int(getattr(self.backbone, "input_size", 112))

    @property
    def auto_resize(self) -> bool:
        return bool(getattr(self.backbone, "auto_resize", False))

    @property
    def embedding_size(self) -> int:
        return int(self.backbone.embedding_size)

    @torch.inference_mode()
    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One batch of RGB uint8 faces [B, H, W, 3] -> (unit embeddings float32 [B, d], FIQA [B] or None)."""
        x = images_to_tensor(images).to(self.device)
        raw = self.backbone(x).float()
        emb = raw + self.backbone(torch.flip(x, dims=[3])).float() if self.flip else raw
        fiqa = None if self.quality is None else self.quality(raw).cpu().numpy().astype(np.float32)
        return l2_normalize(emb.cpu().numpy()).astype(np.float32), fiqa

    @torch.inference_mode()
    def embed_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """Float RGB faces [B, 3, H, W] in [0, 1] -> raw (unnormalised) embeddings [B, d] on the input's device.

        The input becomes ``(255 x - 127.5) / 128``; with ``flip`` the mirror image's embedding is added.
        """
        if x01.ndim != 4 or x01.shape[1] != 3:
            raise EmbedderMismatchError(f"{self.name}: expected faces [B, 3, H, W], got {tuple(x01.shape)}")
        x = (x01.to(self.device, torch.float32) * 255.0 - 127.5) / 128.0
        emb = self.backbone(x).float()
        if self.flip:
            emb = emb + self.backbone(torch.flip(x, dims=[3])).float()
        return emb.to(x01.device)


def load_face_embedder(model: str | Path, quality_path: str | Path | None = None, flip: bool = True,
                       device: str | torch.device = "cpu", arch: str | None = None,
                       embedding_size: int = 512) -> FaceEmbedder:
    """A face embedder from our export prefix (``<prefix>.{safetensors,json}``) or, for a path ending in
    ``.pth``, an insightface ``arcface_torch`` state_dict loaded into the backbone ``arch`` (e.g.
    ``iresnet100``; read with ``torch.load(weights_only=True)``). ``quality_path``: a CR-FIQA head.
    """
    if str(model).endswith(".pth"):
        if not arch:
            raise EmbedderMismatchError(f"{model}: an insightface .pth holds no architecture; name it (arch=iresnet100)")
        if not Path(model).is_file():
            raise FileNotFoundError(f"face embedder {model} not found")
        backbone = load_insightface_pth(build_backbone(arch, embedding_size), model)
    else:
        backbone = load_backbone(model, device="cpu")
    if not hasattr(backbone, "embedding_size"):
        raise EmbedderMismatchError(f"{model}: backbone has no embedding_size attribute")
    quality = None
    if quality_path is not None:
        if not Path(quality_path).is_file():
            raise FileNotFoundError(f"quality head {quality_path} not found")
        quality = QualityHead(int(backbone.embedding_size))
        try:
            load_state_dict_strict(quality, load_file(str(quality_path)), source=str(quality_path))
        except BackboneMismatchError as exc:
            raise EmbedderMismatchError(
                f"quality head {quality_path} does not fit the {backbone.embedding_size}-d embedder "
                f"{model}: {exc}") from exc
    return FaceEmbedder(backbone, quality, flip, device, name=str(model))


def check_embedder_fits(evaluator: FaceEmbedder, image_size: int | None = None, embedding_size: int | None = None,
                         where: str = "dataset") -> None:
    """EmbedderMismatchError unless ``image_size`` images and ``embedding_size`` (each if given) fit the evaluator.

    Images fit when their side equals the backbone's input size, or the backbone resizes its input
    (``auto_resize``).
    """
    if image_size is not None and image_size != evaluator.input_size and not evaluator.auto_resize:
        raise EmbedderMismatchError(
            f"{where}: {image_size}x{image_size} images do not fit the evaluator {evaluator.name}, which takes "
            f"{evaluator.input_size}x{evaluator.input_size} inputs (and does not resize them)")
    if embedding_size is not None and embedding_size != evaluator.embedding_size:
        raise EmbedderMismatchError(
            f"{where}: expects {embedding_size}-d embeddings, the evaluator {evaluator.name} gives "
            f"{evaluator.embedding_size}-d")
