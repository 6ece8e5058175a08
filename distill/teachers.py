"""Black-box teachers for SynthDistill: an FR model as a function of float faces in [0, 1].

A teacher returns raw (unnormalised) embeddings with no gradient; it never exposes its weights to the
student. Each teacher applies its own input normalisation:

* :class:`EmbedderTeacher`: our ``train_fr`` exports and insightface ``arcface_torch`` IResNet ``.pth`` files
  through :func:`fr.face_embedder.load_face_embedder`: RGB ``(255 x - 127.5) / 128`` (insightface's).
* :class:`OnnxTeacher`: any ONNX FR model through onnxruntime (an optional extra), with the input
  normalisation ``(255 x - mean) / std`` and channel order given by the user.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.latent_generator import FACE_SIZE, resize_faces01


class TeacherError(ValueError):
    """A teacher does not fit the distillation (embedding size, input size, missing extra)."""


class Teacher:
    """``embedding_size``, ``input_size``, ``name``; ``__call__(x01 [B, 3, H, W]) -> raw embeddings [B, d]``."""

    embedding_size: int
    input_size: int
    name: str

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"teacher": self.name, "embedding_size": self.embedding_size, "input_size": self.input_size}


class EmbedderTeacher(Teacher):
    """A :class:`fr.face_embedder.FaceEmbedder` (no flip: the teacher embeds exactly the image the student sees)."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.embedding_size = embedder.embedding_size
        self.input_size = FACE_SIZE if embedder.auto_resize else embedder.input_size
        self.name = embedder.name
        for p in embedder.backbone.parameters():
            p.requires_grad_(False)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        # embed_unit runs under inference_mode; clone() outside it gives an ordinary tensor that autograd
        # may save as the MSE target
        return self.embedder.embed_unit(x01.detach()).clone()


class OnnxTeacher(Teacher):
    """An ONNX FR model run by onnxruntime on [B, 3, S, S] float32 input ``(255 x - mean) / std``."""

    def __init__(self, path: str | Path, input_size: int = FACE_SIZE, mean: float = 127.5, std: float = 127.5,
                 bgr: bool = False, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise TeacherError(f"ONNX teacher {path}: onnxruntime is not installed (an optional extra: "
                               "pip install onnxruntime, or onnxruntime-gpu)") from exc
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX teacher {path} not found")
        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size, self.mean, self.std, self.bgr = int(input_size), float(mean), float(std), bool(bgr)
        self.name = str(path)
        probe = self._run(torch.zeros(1, 3, self.input_size, self.input_size))
        self.embedding_size = int(probe.shape[1])

    def _run(self, x01: torch.Tensor) -> np.ndarray:
        x = resize_faces01(x01.detach().float().cpu(), self.input_size)
        if self.bgr:
            x = x.flip(1)
        arr = ((x * 255.0 - self.mean) / self.std).numpy().astype(np.float32)
        out = np.asarray(self.session.run(None, {self.input_name: arr})[0], dtype=np.float32)
        return out.reshape(out.shape[0], -1)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x01)).to(x01.device)


def load_teacher(path: str | Path, arch: str = "", device: str | torch.device = "cpu",
                 onnx_input_size: int = FACE_SIZE) -> Teacher:
    """A teacher from our export prefix, an insightface ``.pth`` (``arch`` e.g. ``iresnet100``) or an ``.onnx``."""
    if str(path).endswith(".onnx"):
        return OnnxTeacher(path, input_size=onnx_input_size)
    from fr.face_embedder import load_face_embedder

    return EmbedderTeacher(load_face_embedder(path, flip=False, device=device, arch=arch or None))


def check_teacher_fits(teacher: Teacher, image_size: int, student_embedding_size: int,
                       where: str = "distill.teacher") -> None:
    """TeacherError unless the teacher takes ``image_size`` faces and gives the student's embedding size."""
    if teacher.embedding_size != student_embedding_size:
        raise TeacherError(f"{where}: teacher {teacher.name} gives {teacher.embedding_size}-d embeddings, the "
                           f"student's head gives {student_embedding_size}-d (set distill.embedding_size)")
    if teacher.input_size != image_size:
        raise TeacherError(f"{where}: teacher {teacher.name} takes {teacher.input_size}px faces, the generator "
                           f"makes {image_size}px")
