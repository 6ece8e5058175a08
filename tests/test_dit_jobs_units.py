"""Plain-torch units behind train_dit / generate: work-list planning, per-row seeded sampling,
the DiT training step, checkpoints and the input checks."""
import numpy as np
import pytest
import torch

from fr.backbones import build_backbone
from fr.data.images import decode_image, resize_faces
from fr.prototypes import Prototypes
from fr.data.shards import DatasetInfo, write_shard
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from fr.training import NonFiniteGuard
from generation.checkpoint import (CheckpointMismatchError, export_ema, load_dit_checkpoint, save_dit_checkpoint,
                                   weights_sha1)
from generation.row_sampler import RowSampler
from generation.conditions import (ConditionError, check_landmark_sets, condition_maps, grid_conditions,
                                   plan_generation, pose_spread, sample_seeded, unit_to_images)
from generation.dit import build_dit, load_dit, save_dit
from generation.ema import EMA
from generation.sampler import sample
from generation.trainer_step import (DiTInputError, DiTShardDataset, check_dit_inputs, check_fr_backbone,
                                     dit_train_step, step_generator)

S = 16  # image side of the test DiT (patch 8 -> 4 tokens)


def _dit(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_dit("tiny", image_size=S, cond_dim=8, **kw)
    with torch.no_grad():  # leave adaLN-Zero's zero output: the samples must depend on the weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _landmarks(n, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([[5, 6], [11, 6], [8, 9], [6, 12], [10, 12]], np.float32)
    return base + rng.normal(0, 1, (n, 5, 2)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# planning


def test_plan_virtual_rows_are_identity_major_and_chunk_independent():
    plan = plan_generation(num_real=3, num_virtual=4, which="virtual", num_identities=3, images_per_identity=5,
                           num_landmarks=7, seed=11)
    assert plan.num_rows == 15 and list(plan.identities) == ["virtual_0", "virtual_1", "virtual_2"]
    rows = plan.rows(0, 15)
    assert rows["label"].tolist() == [j for j in range(3) for _ in range(5)]
    assert rows["proto_index"].tolist() == [3 + j for j in range(3) for _ in range(5)]
    assert rows["image_index"].tolist() == list(range(5)) * 3
    # each row's seeds are a function of (seed, prototype row, image index) only
    for r in (0, 7, 14):
        a, b = np.random.SeedSequence([11, int(rows["proto_index"][r]), int(rows["image_index"][r])]).generate_state(
            2, dtype=np.uint64)
        assert rows["noise_seed"][r] == int(a) >> 1 and rows["landmark_index"][r] == int(b) % 7
    pieces = [plan.rows(s, e) for s, e in plan.chunks(4)]
    assert [e - s for s, e in plan.chunks(4)] == [4, 4, 4, 3]
    for key in rows:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), rows[key])


def test_plan_real_augmentation_tops_up_to_n():
    counts = np.array([2, 5, 1, 7])
    plan = plan_generation(4, 2, "both", 0, 3, num_landmarks=5, seed=0, augment_real_to=5, real_counts=counts,
                           real_names=["a", "b", "c", "d"])
    # class b (5) and d (7) need nothing and are left out; labels stay contiguous
    assert list(plan.identities) == ["a", "c", "virtual_0", "virtual_1"]
    assert plan.counts.tolist() == [3, 4, 3, 3] and plan.proto_index.tolist() == [0, 2, 4, 5]
    assert np.bincount(plan.rows(0, plan.num_rows)["label"]).tolist() == [3, 4, 3, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(which="fake"), "which"),
    (dict(which="virtual", augment_real_to=5), "augment_real_to"),
    (dict(which="real", augment_real_to=5, real_counts=np.array([1])), "image count"),
    (dict(which="virtual", num_virtual=0), "no virtual"),
    (dict(which="real", images_per_identity=0), "empty"),
])
def test_plan_errors(kwargs, match):
    args = dict(num_real=2, num_virtual=2, which="real", num_identities=0, images_per_identity=2,
                num_landmarks=3, seed=0)
    with pytest.raises(ConditionError, match=match):
        plan_generation(**{**args, **kwargs})


def test_landmark_sets_shape_and_pose_spread():
    with pytest.raises(ConditionError, match=r"\[M >= 1, 5, 2\]"):
        check_landmark_sets(np.zeros((4, 4, 2)))
    with pytest.raises(ConditionError, match="NaN"):
        check_landmark_sets(np.full((1, 10), np.nan))
    lm = np.repeat(_landmarks(1), 5, axis=0)
    lm[:, 2, 0] += np.array([0.0, -3.0, 3.0, -1.0, 1.0])  # nose moved left/right: the yaw proxy's order
    assert pose_spread(lm, 3).tolist() == [1, 0, 2]
    rows, sets, labels = grid_conditions(5, 0, 2, lm, 3)
    assert rows.tolist() == [0, 0, 0, 4, 4, 4] and labels == ["r0"] * 3 + ["r4"] * 3
    np.testing.assert_array_equal(sets[3:], lm[[1, 0, 2]])


# ------------------------------------------------------------------------------------------------
# sampling


def test_sample_seeded_matches_sampler_and_ignores_batching():
    model = _dit()
    protos = torch.randn(4, 8)
    maps = condition_maps(torch.from_numpy(_landmarks(4)), S, 5)
    seeds = [3, 99, 3, 12345]
    full = sample_seeded(model, protos, maps, seeds, steps=4, guidance=2.0)
    # row 0 equals the library sampler with a generator seeded like the row
    ref = sample(model, protos[:1], maps[:1], steps=4, guidance=2.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(full[:1], ref, atol=1e-5, rtol=0)
    split = torch.cat([sample_seeded(model, protos[i:i + 1], maps[i:i + 1], seeds[i:i + 1], 4, 2.0) for i in range(4)])
    torch.testing.assert_close(full, split, atol=1e-5, rtol=0)
    assert (full[0] - full[1]).abs().max() > 0.05  # other seed -> other image
    stoch = sample_seeded(model, protos, maps, seeds, steps=4, guidance=2.0, eta=1.0)
    stoch_split = torch.cat([sample_seeded(model, protos[i:i + 2], maps[i:i + 2], seeds[i:i + 2], 4, 2.0, 1.0)
                             for i in (0, 2)])
    torch.testing.assert_close(stoch, stoch_split, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="guidance"):
        sample_seeded(model, protos, maps, seeds, steps=4, guidance=50.0)
    with pytest.raises(ValueError, match="steps"):
        sample_seeded(model, protos, maps, seeds, steps=0)
    with pytest.raises(ValueError, match="3 seeds for 4 prototypes"):
        sample_seeded(model, protos, maps, seeds[:3], steps=4)
    with pytest.raises(ValueError, match="2 generators for 4 prototypes"):
        sample(model, protos, maps, steps=4, generator=[torch.Generator(), torch.Generator()])


def test_row_sampler_rows_do_not_depend_on_batch(tmp_path):
    from fr.prototypes import save_prototypes

    save_dit(_dit(), tmp_path / "dit")
    save_prototypes(tmp_path / "protos", torch.randn(5, 8), 3, 2)
    plan = plan_generation(3, 2, "both", 0, 2, num_landmarks=6, seed=1)
    rows = plan.rows(0, plan.num_rows)
    sampler = RowSampler(str(tmp_path / "dit"), prototypes_prefix=str(tmp_path / "protos"), landmark_sets=_landmarks(6), steps=3, guidance=3.0)
    whole = sampler(rows)
    parts = [sampler({k: v[i:i + 3] for k, v in rows.items()}) for i in range(0, plan.num_rows, 3)]
    assert whole["row"].tolist() == rows["row"].tolist()
    for key in ("row", "label", "landmarks"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    a = np.stack([decode_image(b) for b in whole["image"]]).astype(int)
    b = np.stack([decode_image(b) for p in parts for b in p["image"]]).astype(int)
    assert a.shape == (10, S, S, 3) and np.abs(a - b).max() <= 1
    np.testing.assert_array_equal(whole["landmarks"], _landmarks(6)[rows["landmark_index"]].reshape(-1, 10))


def test_row_sampler_upscales_a_smaller_dit_to_the_output_size(tmp_path):
    from fr.prototypes import save_prototypes

    save_dit(_dit(), tmp_path / "dit")
    save_prototypes(tmp_path / "protos", torch.randn(5, 8), 3, 2)
    plan = plan_generation(3, 2, "both", 0, 1, num_landmarks=6, seed=1)
    rows = plan.rows(0, plan.num_rows)
    lm_out = _landmarks(6) * 3  # landmark sets in 48 px output coordinates
    big = RowSampler(str(tmp_path / "dit"), prototypes_prefix=str(tmp_path / "protos"), landmark_sets=lm_out, steps=2, guidance=1.0,
                     image_format="png", output_size=3 * S)(rows)
    small = RowSampler(str(tmp_path / "dit"), prototypes_prefix=str(tmp_path / "protos"), landmark_sets=_landmarks(6), steps=2, guidance=1.0,
                       image_format="png")(rows)
    faces = np.stack([decode_image(b) for b in big["image"]])
    assert faces.shape == (5, 3 * S, 3 * S, 3)
    # the same samples (condition maps from the scaled-down landmarks), bicubic-upscaled
    expected = resize_faces(np.stack([decode_image(b) for b in small["image"]]), 3 * S)
    assert np.abs(faces.astype(int) - expected.astype(int)).max() <= 2
    np.testing.assert_allclose(big["landmarks"], lm_out[rows["landmark_index"]].reshape(-1, 10))
    with pytest.raises(ConditionError, match="smaller than the generator"):
        RowSampler(str(tmp_path / "dit"), prototypes_prefix=str(tmp_path / "protos"), landmark_sets=lm_out, output_size=S // 2)


# ------------------------------------------------------------------------------------------------
# training step, checkpoint


def _step(model, ema, opt, images, guard, step=0, seed=0):
    protos = torch.nn.functional.normalize(torch.randn(images.shape[0], 8, generator=torch.Generator().manual_seed(5)))
    return dit_train_step(model, ema, opt, images, protos, torch.from_numpy(_landmarks(images.shape[0])),
                          step_generator(seed, step, 0), guard, step, cond_drop_prob=0.5)


def test_train_step_updates_model_and_ema_and_skips_nonfinite():
    images = torch.rand(4, 3, S, S) * 2 - 1
    runs = []
    for _ in range(2):
        model = _dit().train()
        ema = EMA(model, 0.5)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        before = [p.detach().clone() for p in model.parameters()]
        out = _step(model, ema, opt, images, NonFiniteGuard(3))
        runs.append(out["loss"])
        assert np.isfinite(out["loss"]) and out["id"] == 0.0
        changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
        assert any(changed)
        # EMA with decay 0.5 sits halfway between the old and the new weights
        for a, p, e in zip(before, model.parameters(), ema.module.parameters()):
            torch.testing.assert_close(e, 0.5 * a + 0.5 * p.detach())
    assert runs[0] == runs[1]  # the step's randomness comes from step_generator only
    guard = NonFiniteGuard(3)
    snap = [p.detach().clone() for p in model.parameters()]
    out = _step(model, ema, opt, torch.full_like(images, float("nan")), guard, step=1)
    assert not np.isfinite(out["loss"]) and guard.total == 1
    assert all(torch.equal(a, p) for a, p in zip(snap, model.parameters()))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = _dit().train()
    ema = EMA(model, 0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, ema, opt, torch.rand(2, 3, S, S) * 2 - 1, NonFiniteGuard(3))
    save_dit_checkpoint(tmp_path / "ck", model, ema, opt, {"step": 1})
    model2 = _dit(seed=1).train()
    ema2 = EMA(model2, 0.9)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    state = load_dit_checkpoint(tmp_path / "ck", model2, ema2, opt2)
    assert state["step"] == 1 and state["ema_decay"] == 0.9
    assert weights_sha1(model2) == weights_sha1(model) and weights_sha1(ema2.module) == weights_sha1(ema.module)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert weights_sha1(load_dit(export_ema(tmp_path / "ck", tmp_path / "export"))) == weights_sha1(ema.module)
    other = build_dit("tiny", image_size=S, cond_dim=8, depth=3)
    with pytest.raises(CheckpointMismatchError, match="depth"):
        load_dit_checkpoint(tmp_path / "ck", other, EMA(other, 0.9), None)
    with pytest.raises(CheckpointMismatchError, match="decay"):
        load_dit_checkpoint(tmp_path / "ck", model2, EMA(model2, 0.5), None)


# ------------------------------------------------------------------------------------------------
# dataset and input checks


def test_shard_dataset_gives_unit_images_and_landmarks(tmp_path):
    toy = ToyFaceConfig(num_identities=2, image_size=32, min_images=2, max_images=2)
    records = list(iter_toy_records(toy, [0, 1]))
    write_shard(tmp_path / "part-00000.parquet", records)
    ds = DiTShardDataset(tmp_path, image_size=32)
    image, label, lm = ds[3]
    expected = decode_image(records[3]["image"]).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert label == 1 and np.allclose(lm.numpy().reshape(-1), records[3]["landmarks"])
    assert unit_to_images(image[None])[0].tolist() == decode_image(records[3]["image"]).tolist()


def test_shard_dataset_downscales_faces_and_landmarks_for_a_smaller_dit(tmp_path):
    toy = ToyFaceConfig(num_identities=2, image_size=32, min_images=2, max_images=2)
    records = list(iter_toy_records(toy, [0, 1]))
    write_shard(tmp_path / "part-00000.parquet", records)
    ds = DiTShardDataset(tmp_path, image_size=32, model_image_size=16)
    image, label, lm = ds[2]
    assert image.shape == (3, 16, 16) and label == 1
    small = resize_faces(decode_image(records[2]["image"])[None], 16)[0]
    assert unit_to_images(image[None])[0].tolist() == small.tolist()
    np.testing.assert_allclose(lm.numpy().reshape(-1), np.asarray(records[2]["landmarks"]) / 2, rtol=1e-6)
    with pytest.raises(DiTInputError, match="between 1 and the dataset's 32px"):
        DiTShardDataset(tmp_path, image_size=32, model_image_size=64)


def test_input_checks():
    cfg = build_dit("tiny", image_size=32, cond_dim=8).config
    info = DatasetInfo(num_classes=3, num_images=12, image_size=32, identities=["a", "b", "c"])
    good = Prototypes(torch.randn(5, 8), 3, 2, ["a", "b", "c"])
    check_dit_inputs(cfg, good, info, 4, 2)
    cases = [
        (Prototypes(torch.randn(5, 6), 3, 2), info, 4, "dimension 6"),
        (Prototypes(torch.randn(5, 8), 4, 1), info, 4, "4 real prototypes but the dataset has 3"),
        (Prototypes(torch.randn(5, 8), 3, 2, ["a", "x", "c"]), info, 4, "row 1 is identity 'x'"),
        (good, DatasetInfo(3, 12, 16, ["a", "b", "c"]), 4, "16px, smaller than the DiT's image_size 32"),
        (good, info, 3, "divide"),
        (good, info, 16, "fewer than one batch"),
    ]
    for protos, inf, batch, match in cases:
        with pytest.raises(DiTInputError, match=match):
            check_dit_inputs(cfg, protos, inf, batch, 2)
    check_fr_backbone(build_backbone("iresnet_tiny", 8, base_width=8, input_size=32), 8, 32)
    with pytest.raises(DiTInputError, match=r"shape \(16,\)"):
        check_fr_backbone(build_backbone("iresnet_tiny", 16, base_width=8, input_size=32), 8, 32)
    with pytest.raises(DiTInputError, match="cannot embed 48x48"):
        check_fr_backbone(build_backbone("iresnet_tiny", 8, base_width=8, input_size=32), 8, 48)
