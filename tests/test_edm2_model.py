"""EDM2 sampler, power EMA, training step, generator interface and export round trip (tiny sizes)."""
import numpy as np
import pytest
import torch

from fr.training import NonFiniteGuard
from generation.edm2_checkpoint import load_edm2_checkpoint, save_edm2_checkpoint, save_edm2_model
from generation.edm2_ema import PowerEMA, gamma_to_std, posthoc_weights, reconstruct_ema, std_to_gamma
from generation.edm2_generator import EDM2Generator
from generation.edm2_loss import EDM2LossConfig, edm2_train_step, learning_rate, make_optimizer, one_hot
from generation.edm2_sampler import heun_sample, sigma_steps
from generation.edm2_unet import EDM2Config, EDM2Denoiser
from generation.generator import GeneratorError, generator_kind, load_generator


def _cfg(num_classes=4):
    return EDM2Config(image_size=8, num_classes=num_classes, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[4], channels_per_head=8, logvar_channels=16)


def test_sigma_steps_formula():
    t = sigma_steps(32)
    assert len(t) == 33 and float(t[0]) == pytest.approx(80.0) and float(t[31]) == pytest.approx(0.002)
    assert float(t[-1]) == 0.0
    i = 10
    ref = (80 ** (1 / 7) + i / 31 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(t[i]) == pytest.approx(ref)


def test_heun_with_exact_mixture_denoiser_reproduces_the_mixture():
    """1-D mixture 0.3 N(-1, 0.2^2) + 0.7 N(1.5, 0.5^2): D(x, s) = E[x0 | x] in closed form."""
    w, mu, var = torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([-1.0, 1.5], dtype=torch.float64), \
        torch.tensor([0.04, 0.25], dtype=torch.float64)

    def denoise(x, s):
        tot = var + s ** 2
        logp = torch.log(w) - 0.5 * torch.log(tot) - 0.5 * (x[..., None] - mu) ** 2 / tot
        r = torch.softmax(logp, dim=-1)
        return (r * (mu + var / tot * (x[..., None] - mu))).sum(-1)

    x = heun_sample(denoise, torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 32)
    mean_ref = float((w * mu).sum())
    var_ref = float((w * (var + mu ** 2)).sum()) - mean_ref ** 2
    assert float(x.mean()) == pytest.approx(mean_ref, rel=0.05)
    assert float(x.var()) == pytest.approx(var_ref, rel=0.05)
    assert float((x < 0.25).double().mean()) == pytest.approx(0.3, abs=0.02)  # the mode weights too


def test_power_ema_std_and_posthoc_reconstruction():
    for std in (0.05, 0.10, 0.2):
        assert gamma_to_std(std_to_gamma(std)) == pytest.approx(std, rel=1e-6)
    assert std_to_gamma(0.05) > std_to_gamma(0.10)  # narrower profile, larger exponent
    # a scalar trajectory; two profiles tracked with snapshots every 50 steps; reconstruct std 0.075
    rng = np.random.default_rng(0)
    theta = np.cumsum(rng.normal(size=2000)) * 0.1
    model = torch.nn.Linear(1, 1, bias=False)
    ema = PowerEMA(model, (0.05, 0.10))
    snaps = []
    for t, v in enumerate(theta, start=1):
        with torch.no_grad():
            model.weight.fill_(float(v))
        ema.update(model)
        if t % 50 == 0:
            snaps += [(t, g, float(m.weight)) for g, m in zip(ema.gammas, ema.modules)]
    target_gamma = std_to_gamma(0.075)
    ts = np.arange(1, len(theta) + 1, dtype=np.float64)
    true = float((ts ** target_gamma * theta).sum() / (ts ** target_gamma).sum())
    x = posthoc_weights(np.array([s[0] for s in snaps]), np.array([s[1] for s in snaps]), len(theta), target_gamma)
    rec = float(np.dot(x, [s[2] for s in snaps]))
    spread = float(np.ptp(theta[-600:]))
    assert abs(rec - true) < 0.05 * spread
    direct = float(ema.module_for(0.05).weight)
    x_same = posthoc_weights(np.array([s[0] for s in snaps]), np.array([s[1] for s in snaps]), len(theta),
                             std_to_gamma(0.05))
    assert float(np.dot(x_same, [s[2] for s in snaps])) == pytest.approx(direct, abs=0.02 * spread)


def _train(model, images, labels, steps, seed=0):
    opt = make_optimizer(model, 1e-2)
    guard = NonFiniteGuard(3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        out = edm2_train_step(model, opt, images, one_hot(labels, model.config.num_classes),
                              EDM2LossConfig(label_dropout=0.1), g, guard, step, learning_rate(step, 1e-2, 0, 10))
        losses.append(float(out["loss"]))
    return losses


def test_loss_finite_and_decreasing_when_overfitting():
    torch.manual_seed(0)
    model = EDM2Denoiser(_cfg())
    images = torch.rand(8, 3, 8, 8) * 2 - 1
    labels = torch.arange(8) % 4
    losses = _train(model, images, labels, 60)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.1


def test_generator_interface_determinism_batching_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EDM2Denoiser(_cfg(5))
    with torch.no_grad():  # non-zero output so the samples depend on the labels
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
    save_edm2_model(model, tmp_path / "m", extra={"trained_on": "test"})
    assert generator_kind(tmp_path / "m") == "auggen_edm2"
    gen = load_generator(tmp_path / "m", steps=4)
    assert isinstance(gen, EDM2Generator) and gen.image_size == 8
    eye = np.eye(5, dtype=np.float32)
    cvec = np.stack([eye[0], 0.7 * eye[1] + 0.7 * eye[2], np.zeros(5, np.float32), eye[3]])
    a = gen.sample({"class_vector": cvec}, [1, 2, 3, 4])
    assert a.shape == (4, 8, 8, 3) and a.dtype == np.uint8
    b = gen.sample({"class_vector": cvec[[2, 0]]}, [3, 1])  # other batch, other order
    assert np.abs(a[[2, 0]].astype(int) - b.astype(int)).max() <= 1
    assert np.array_equal(gen.sample({"class_vector": cvec[:1]}, [1]), gen.sample({"class_vector": cvec[:1]}, [1]))
    assert not np.array_equal(a[0], gen.sample({"class_vector": cvec[:1]}, [9])[0])
    with pytest.raises(GeneratorError, match=r"\[B, 5\]"):
        gen.sample({"class_vector": np.zeros((1, 4), np.float32)}, [1])
    gen_cfg = load_generator(tmp_path / "m", steps=4, guidance=2.0)
    assert gen_cfg.sample({"class_vector": cvec[:2]}, [1, 2]).shape == (2, 8, 8, 3)


def test_checkpoint_round_trip_and_snapshots(tmp_path):
    torch.manual_seed(0)
    model = EDM2Denoiser(_cfg())
    ema = PowerEMA(model)
    opt = make_optimizer(model, 1e-3)
    _train(model, torch.rand(4, 3, 8, 8) * 2 - 1, torch.arange(4), 2)
    ema.update(model)
    ema.write_snapshots(tmp_path / "snaps", 1)
    save_edm2_checkpoint(tmp_path / "ck", model, ema, opt, {"step": 2})
    model2 = EDM2Denoiser(_cfg())
    ema2 = PowerEMA(model2)
    state = load_edm2_checkpoint(tmp_path / "ck", model2, ema2, make_optimizer(model2, 1e-3))
    assert state["step"] == 2 and ema2.num_updates == 1
    for p, q in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(p, q)
    buffers = tuple(k for k, _ in model.named_buffers())
    rec, info = reconstruct_ema(tmp_path / "snaps", 0.05, keep_keys=buffers)
    for k, v in ema.module_for(0.05).state_dict().items():
        torch.testing.assert_close(rec[k], v, rtol=1e-4, atol=1e-5)
    from generation.edm2_checkpoint import EDM2CheckpointError

    with pytest.raises(EDM2CheckpointError, match="architecture"):
        other = EDM2Denoiser(_cfg(6))
        load_edm2_checkpoint(tmp_path / "ck", other, PowerEMA(other), None)


def test_overfit_four_classes_regenerates_each_class():
    """4 classes of distinct colour patterns: after a short overfit, samples of class c are nearest to c's
    training mean (a nearest-class-mean classifier in pixel space stands in for the FR model here)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[0.9, -0.8, -0.8], [-0.8, 0.9, -0.8], [-0.8, -0.8, 0.9], [0.9, 0.9, -0.8]])
    ramp = torch.linspace(-0.3, 0.3, 8)
    base = colours[:, :, None, None] + torch.stack([ramp[None, :].expand(8, 8)] * 3)[None] * (torch.arange(4) % 2 * 2 - 1).reshape(4, 1, 1, 1)
    images = (base.repeat_interleave(4, 0) + 0.05 * torch.randn(16, 3, 8, 8, generator=g)).clamp(-1, 1)
    labels = torch.arange(4).repeat_interleave(4)
    model = EDM2Denoiser(_cfg(4))
    opt = make_optimizer(model, 2e-2)
    guard = NonFiniteGuard(3)
    for step in range(300):
        edm2_train_step(model, opt, images, one_hot(labels, 4), EDM2LossConfig(label_dropout=0.0), g, guard, step,
                        learning_rate(step, 2e-2, 0, 20))
    from generation.edm2_sampler import sample_edm2

    faces = sample_edm2(model, torch.eye(4).repeat_interleave(3, 0), list(range(12)), steps=12)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    means = base.reshape(4, -1)
    pred = torch.cdist(x.reshape(12, -1), means).argmin(1)
    assert pred.tolist() == torch.arange(4).repeat_interleave(3).tolist()


def test_export_ema_width_reexports_another_width_without_touching_the_export(tmp_path):
    """EDM2's post-hoc EMA choice: a finished export re-exported at another width from its snapshots equals the
    reconstruction, keeps the provenance, and never writes over the original export."""
    from generation.edm2_checkpoint import EDM2CheckpointError, export_ema_width, load_edm2_model

    torch.manual_seed(0)
    model = EDM2Denoiser(_cfg())
    ema = PowerEMA(model)
    for step in (1, 2, 3):
        _train(model, torch.rand(4, 3, 8, 8) * 2 - 1, torch.arange(4), 1)
        ema.update(model)
        ema.write_snapshots(tmp_path / "snaps", step)
    save_edm2_model(ema.module_for(0.10), tmp_path / "m", extra={"trained_on": "/data/x", "export": {"ema_std": 0.1}})
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    how = export_ema_width(tmp_path / "m", tmp_path / "snaps", tmp_path / "m-ema0.050", 0.05)
    assert how["ema_std"] == 0.05 and how["from"] == "post-hoc reconstruction"
    buffers = tuple(k for k, _ in model.named_buffers())
    rec, _ = reconstruct_ema(tmp_path / "snaps", 0.05, keep_keys=buffers)
    out = load_edm2_model(tmp_path / "m-ema0.050")
    for k, v in out.state_dict().items():
        torch.testing.assert_close(v, rec[k])
    import json

    config = json.loads((tmp_path / "m-ema0.050" / "config.json").read_text())
    assert config["trained_on"] == "/data/x" and config["export"]["re_exported_from"] == str(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    with pytest.raises(EDM2CheckpointError, match="new directory"):
        export_ema_width(tmp_path / "m", tmp_path / "snaps", tmp_path / "m", 0.05)
