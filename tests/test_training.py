
import numpy as np
import pytest
import torch

from fr.training import (GlobalBatchOrder, LRSchedule, NonFiniteGuard, NonFiniteLossError, clip_and_step,
                         step_lr, warmup_poly_lr)
from ray_jobs.train_fr import validate_fr_config
from ray_jobs.config import TrainFRSection


def test_step_schedule_divides_by_ten_at_milestones():
    sched = LRSchedule(0.1, "step", steps_per_epoch=10, total_steps=400, milestones=(24, 30, 36))
    assert sched(0) == pytest.approx(0.1)
    assert sched(239) == pytest.approx(0.1)
    assert sched(240) == pytest.approx(0.01)
    assert sched(300) == pytest.approx(0.001)
    assert sched(360) == pytest.approx(0.0001)
    assert step_lr(1.0, 5, [1, 2, 10]) == pytest.approx(0.01)


def test_warmup_poly_schedule():
    assert warmup_poly_lr(0.1, 0, 100, 10) == pytest.approx(0.01)
    assert warmup_poly_lr(0.1, 9, 100, 10) == pytest.approx(0.1)
    assert warmup_poly_lr(0.1, 10, 100, 10) == pytest.approx(0.1)
    assert warmup_poly_lr(0.1, 55, 100, 10) == pytest.approx(0.1 * 0.5 ** 2)
    assert warmup_poly_lr(0.1, 100, 100, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="must be .step. or .poly."):
        LRSchedule(0.1, "cosine", 1, 1)


def test_batch_order_is_independent_of_world_size():
    n, b = 103, 12
    single = GlobalBatchOrder(n, b, 1, 0, seed=3)
    assert single.steps_per_epoch == 8
    for world in (2, 3, 4):
        ranks = [list(GlobalBatchOrder(n, b, world, r, seed=3).epoch_batches(1)) for r in range(world)]
        merged = [sum((ranks[r][s] for r in range(world)), []) for s in range(single.steps_per_epoch)]
        assert merged == list(single.epoch_batches(1))
    # resuming mid-epoch yields exactly the remaining batches
    assert list(single.epoch_batches(2, start_step=5)) == list(single.epoch_batches(2))[5:]
    # every epoch is a permutation (no duplicates), epochs differ
    e0 = sum(single.epoch_batches(0), [])
    assert len(set(e0)) == len(e0) == 96 and e0 != sum(single.epoch_batches(1), [])


def test_batch_order_errors():
    with pytest.raises(ValueError, match="does not divide across 3 workers"):
        GlobalBatchOrder(100, 10, 3, 0, 0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        GlobalBatchOrder(5, 10, 1, 0, 0)


def test_nonfinite_guard_skips_then_stops():
    guard = NonFiniteGuard(3)
    assert guard.check(True, 0)
    assert not guard.check(False, 1)
    assert not guard.check(False, 2)
    assert guard.check(True, 3)  # a good step resets the run of bad ones
    assert not guard.check(False, 4) and not guard.check(False, 5)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row.*step 6"):
        guard.check(False, 6)
    assert guard.total == 5


def test_clip_and_step_clips_global_norm():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norm = clip_and_step([p], [opt], max_norm=1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(p.detach().numpy(), [-0.6, -0.8, 0, 0], atol=1e-6)
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    clip_and_step([p], [opt], max_norm=0)  # 0 = no clipping
    np.testing.assert_allclose(p.detach().numpy(), [-3.6, -4.8, 0, 0], atol=1e-6)


def test_validate_fr_config_errors_before_training():
    t = TrainFRSection(batch_size=10, num_workers=3)
    with pytest.raises(ValueError, match="does not divide across 3 workers"):
        validate_fr_config(t, 1000)
    with pytest.raises(ValueError, match="fewer than train_fr.batch_size"):
        validate_fr_config(TrainFRSection(batch_size=64), 10)
    with pytest.raises(ValueError, match="lr_schedule"):
        validate_fr_config(TrainFRSection(batch_size=8, lr_schedule="exp"), 100)


def test_autocast_dtype_bf16_on_cpu_only_when_asked_and_supported(monkeypatch, caplog):
    import fr.training as training

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.autocast_dtype(cpu, gpu_bf16=True, cpu_bf16=False) is None
    assert training.autocast_dtype(cpu, gpu_bf16=False, cpu_bf16=True) is torch.bfloat16
    assert training.autocast_dtype(gpu, gpu_bf16=True, cpu_bf16=False) is torch.bfloat16
    assert training.autocast_dtype(gpu, gpu_bf16=False, cpu_bf16=True) is None
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)  # emulated bf16 would be slower: fp32, warned
    with caplog.at_level("WARNING"):
        assert training.autocast_dtype(cpu, gpu_bf16=False, cpu_bf16=True) is None
    assert "no bf16 units" in caplog.text


def test_fr_step_runs_under_cpu_bf16_with_fp32_weights(monkeypatch):
    import fr.train_step as train_step
    from fr.backbones import build_backbone
    from fr.fr_model import FRNet
    from fr.head_registry import HeadSpec, build_head
    from fr.margins import build_margin

    monkeypatch.setattr(train_step, "autocast_dtype", lambda device, gpu, cpu: torch.bfloat16 if cpu else None)
    torch.manual_seed(0)
    net = FRNet(build_backbone("iresnet_tiny", 16, base_width=8, input_size=32), 16, crfiqa=False)
    head = build_head("softmax", HeadSpec(num_classes=5, embedding_size=16, margin=build_margin("arcface")))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (net, head)]
    fp32 = train_step.FRTrainStep(net, head, *opts, device=torch.device("cpu"))
    assert not fp32.amp
    step = train_step.FRTrainStep(net, head, *opts, device=torch.device("cpu"), cpu_bf16=True)
    assert step.amp and step.amp_dtype is torch.bfloat16 and step.scaler is None
    seen = []
    hook = net.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    out = step(torch.randn(8, 3, 32, 32), torch.arange(8) % 5, lr=0.1, step=0)
    hook.remove()
    assert seen == [torch.bfloat16] and np.isfinite(float(out["loss"]))  # the forward ran in bf16
    assert all(p.dtype is torch.float32 for p in net.parameters())  # the weights stay fp32
