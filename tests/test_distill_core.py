"""SynthDistill core: eqs. 2-3, Algorithm 1's two steps, teachers, TinyFaR students."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill.kd_step import KDStep, Step1Batch, kd_loss
from distill.latent_generator import LatentGenerator, seeded_generator
from distill.resampling import agreement, resample
from distill.students import StudentError, build_student, load_student, save_student
from distill.teachers import EmbedderTeacher, TeacherError, check_teacher_fits, load_teacher
from fr.backbones import build_backbone
from fr.face_embedder import FaceEmbedder


class RecordingGenerator(LatentGenerator):
    """A fake generator: w = 2 z + 1; the face is a smooth function of w; it records every latent."""

    name = "recording"

    def __init__(self, dim: int = 6, size: int = 16):
        self.z_dim = self.w_dim = dim
        self.image_size = size
        self.calls: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []
        self.basis = torch.randn(dim, 3 * size * size, generator=seeded_generator(7))

    def to_w(self, z):
        return 2 * z + 1

    def synthesize(self, w):
        return torch.sigmoid(w @ self.basis / 3).reshape(-1, 3, self.image_size, self.image_size)


class LinearTeacher:
    """A black-box teacher: a fixed random projection, counting its calls."""

    def __init__(self, size=16, dim=8):
        self.embedding_size, self.input_size, self.name = dim, size, "linear"
        self.proj = torch.randn(3 * size * size, dim, generator=seeded_generator(3), requires_grad=True)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x01):
        self.inputs.append(x01)
        with torch.no_grad():
            return x01.reshape(len(x01), -1) @ self.proj


class TinyStudent(nn.Module):
    def __init__(self, size=16, dim=8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, x):
        return self.net(x)


def test_agreement_is_eq2():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [-4.0, 3.0]])
    torch.testing.assert_close(agreement(a, b), torch.tensor([1.0, 0.0, 0.5]))
    x, y = torch.randn(5, 7), torch.randn(5, 7)
    expected = 0.5 * (1 + (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)))
    torch.testing.assert_close(agreement(x, y), expected)


def test_resample_moves_by_c_s_n():
    w, n = torch.randn(4, 5), torch.randn(4, 5)
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = resample(w, s, 1.3, n)
    torch.testing.assert_close(out - w, 1.3 * s[:, None] * n)
    with pytest.raises(ValueError, match="one s per row"):
        resample(w, s[:2], 1.0, n)


def _run(mode, c=1.0, steps=1, seed=0):
    gen, teacher = RecordingGenerator(), LinearTeacher()
    torch.manual_seed(0)
    student = TinyStudent()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    pre = {}

    def record(tag, z, w):
        gen.calls.append((tag, None if z is None else z.clone(), w.clone()))

    step = KDStep(student, teacher, gen, opt, mode, c, on_latents=record)
    z = gen.sample_latents(8, seed)
    pre["e_s"] = student(gen.synthesize(gen.to_w(z))).detach()
    pre["e_t"] = teacher(gen.synthesize(gen.to_w(z)))
    z2 = gen.sample_latents(8, seed + 100) if mode == "static_2x" else None
    metrics = step(Step1Batch(z=z, noise_seed=123, z2=z2))
    return gen, teacher, student, metrics, pre, z


def test_algorithm1_dynamic_w_step2_latents_are_step1_plus_c_s_n():
    gen, teacher, _, metrics, pre, z = _run("dynamic_w", c=1.5)
    assert [t for t, _, _ in gen.calls] == ["step1", "step2"]
    w1, w2 = gen.calls[0][2], gen.calls[1][2]
    torch.testing.assert_close(w1, gen.to_w(z))
    s = agreement(pre["e_t"], pre["e_s"])  # pre-update embeddings of step 1
    n = gen.latent_noise(w1, seeded_generator(123))
    torch.testing.assert_close(w2, w1 + 1.5 * s[:, None] * n)
    assert set(metrics) >= {"loss_step1", "loss_step2", "loss"}


def test_dynamic_z_perturbs_z_and_maps_again():
    gen, _, _, _, pre, z = _run("dynamic_z", c=0.8)
    _, z2, w2 = gen.calls[1]
    s = agreement(pre["e_t"], pre["e_s"])
    n = gen.latent_noise(z, seeded_generator(123))
    torch.testing.assert_close(z2, z + 0.8 * s[:, None] * n)
    torch.testing.assert_close(w2, gen.to_w(z2))  # W = M(z'): not w + c s n


def test_static_modes_use_fresh_batches_only():
    gen, *_ = _run("static")
    assert [t for t, _, _ in gen.calls] == ["step1"]
    gen, _, _, metrics, _, z = _run("static_2x")
    assert [t for t, _, _ in gen.calls] == ["step1", "step2"]
    assert not torch.allclose(gen.calls[1][1], z)  # an independent fresh batch
    assert "loss_step2" in metrics


def test_teacher_gets_no_gradient_and_student_inputs_are_generated():
    _, teacher, student, _, _, _ = _run("dynamic_w")
    assert teacher.proj.grad is None
    assert all(not x.requires_grad for x in teacher.inputs)
    assert all(p.grad is not None for p in student.parameters())
    # the iteration's only inputs are latents, a noise seed and what the generator / teacher made of those
    # latents (a Ray Data stream's images and embeddings): no label, no real image
    assert set(Step1Batch.__dataclass_fields__) == {"z", "noise_seed", "images", "e_teacher", "z2", "images2",
                                                    "e_teacher2"}


def test_kd_loss_falls_when_distilling():
    gen, teacher = RecordingGenerator(), LinearTeacher()
    torch.manual_seed(1)
    student = TinyStudent()
    step = KDStep(student, teacher, gen, torch.optim.Adam(student.parameters(), lr=1e-3), "dynamic_w", 1.0)
    losses = [float(step(Step1Batch(z=gen.sample_latents(32, i), noise_seed=1000 + i), i)["loss"]) for i in range(60)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def _tiny_embedder(dim=16):
    torch.manual_seed(0)
    bb = build_backbone("iresnet_tiny", embedding_size=dim, base_width=4, layers=[1, 1, 1, 1], input_size=32,
                        auto_resize=True)
    return FaceEmbedder(bb, flip=False, name="tiny")


def test_embedder_teacher_normalisation_and_no_grad():
    emb = _tiny_embedder()
    teacher = EmbedderTeacher(emb)
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    out = teacher(x)
    assert out.shape == (2, 16) and not out.requires_grad
    with torch.no_grad():
        expected = emb.backbone((x * 255 - 127.5) / 128)
    torch.testing.assert_close(out, expected)
    check_teacher_fits(teacher, 112, 16)
    with pytest.raises(TeacherError, match="16-d embeddings.*512-d"):
        check_teacher_fits(teacher, 112, 512)
    kd_loss(torch.zeros(2, 16, requires_grad=True), out).backward()  # usable as the MSE target


def test_teacher_image_size_mismatch():
    bb = build_backbone("iresnet_tiny", embedding_size=8, base_width=4, layers=[1, 1, 1, 1], input_size=32)
    teacher = EmbedderTeacher(FaceEmbedder(bb, flip=False, name="fixed32"))
    with pytest.raises(TeacherError, match="takes 32px faces, the generator makes 112px"):
        check_teacher_fits(teacher, 112, 8)


def test_onnx_teacher_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(TeacherError, match="pip install onnxruntime"):
        load_teacher(tmp_path / "model.onnx")


def test_tinyfar_student_shapes_and_export(tmp_path):
    torch.manual_seed(0)
    student = build_student("c", embedding_size=64, input_size=32)
    assert student.name == "TinyFaR-C@32px"
    out = student(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 64)
    prefix = save_student(student, tmp_path / "student")
    again = load_student(prefix).eval()
    student.eval()
    x = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(again(x), student(x))
    with pytest.raises(StudentError, match="unknown TinyFaR variant 'd'"):
        build_student("d")
    from safetensors.torch import save_file

    save_file({"bogus.weight": torch.zeros(1)}, str(tmp_path / "trunk.safetensors"))
    with pytest.raises(StudentError, match="not a .* checkpoint"):
        build_student("c", trunk_checkpoint=tmp_path / "trunk.safetensors")
