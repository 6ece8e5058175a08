"""AugGen's optional fixed class basis (EDM2Config.label_basis_dim): linear label path, unit magnitude, a clear
error for prototypes of another dataset, saved with the weights, and refused by train_auggen before work starts."""
import numpy as np
import pytest
import torch

from fr.prototypes import Prototypes, save_prototypes
from generation.edm2_checkpoint import load_edm2_model, save_edm2_model
from generation.edm2_label_basis import LabelBasisError, label_basis_from_prototypes
from generation.edm2_unet import EDM2Config, EDM2Denoiser, set_label_basis

TINY = dict(image_size=8, num_classes=5, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
            channels_per_head=8, logvar_channels=16)


def _model(dim=16):
    torch.manual_seed(0)
    model = EDM2Denoiser(EDM2Config(**TINY, label_basis_dim=dim))
    set_label_basis(model, torch.randn(5, dim))
    return model


def test_label_input_is_linear_and_unit_for_one_hot_rows():
    unet = _model().unet
    eye = torch.eye(5)
    mixed = 0.3 * eye[1] + 0.9 * eye[4]
    both = unet.label_input(torch.stack([eye[1], eye[4], mixed]))
    assert torch.allclose(both[2], 0.3 * both[0] + 0.9 * both[1], atol=1e-6)
    assert torch.allclose(unet.label_input(eye).pow(2).mean(dim=1), torch.ones(5), atol=1e-5)
    assert torch.count_nonzero(unet.label_input(torch.zeros(1, 5))) == 0  # the unconditional row stays zero
    one_hot = EDM2Denoiser(EDM2Config(**TINY)).unet  # EDM2's own path: c sqrt(N)
    assert torch.allclose(one_hot.label_input(eye), eye * np.sqrt(5))


def test_set_label_basis_refuses_bad_input():
    with pytest.raises(ValueError, match="no class basis"):
        set_label_basis(EDM2Denoiser(EDM2Config(**TINY)), torch.randn(5, 16))
    model = EDM2Denoiser(EDM2Config(**TINY, label_basis_dim=16))
    with pytest.raises(ValueError, match=r"\[5, 16\]"):
        set_label_basis(model, torch.randn(4, 16))
    rows = torch.randn(5, 16)
    rows[2] = 0
    with pytest.raises(ValueError, match="non-zero"):
        set_label_basis(model, rows)


def test_basis_from_prototypes_checks_the_identities():
    protos = Prototypes(torch.randn(5 + 2, 16), 5, 2, [f"id{k}" for k in range(5)])
    basis = label_basis_from_prototypes(protos, [f"id{k}" for k in range(5)])
    assert basis.shape == (5, 16) and torch.allclose(basis.norm(dim=1), torch.ones(5))
    assert torch.allclose(basis[3], torch.nn.functional.normalize(protos.weight[3], dim=0))
    with pytest.raises(LabelBasisError, match="row 1 is 'id1' but the dataset's class 1 is 'other'"):
        label_basis_from_prototypes(protos, ["id0", "other", "id2", "id3", "id4"])
    with pytest.raises(LabelBasisError, match="5 real prototypes for a dataset of 4 classes"):
        label_basis_from_prototypes(protos, ["id0", "id1", "id2", "id3"])


def test_basis_travels_with_the_exported_weights(tmp_path):
    model = _model()
    loaded = load_edm2_model(save_edm2_model(model, tmp_path / "gen"))
    assert loaded.config.label_basis_dim == 16
    assert torch.equal(loaded.unet.label_basis, model.unet.label_basis)
    x, sigma, c = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0]), torch.eye(5)[:2]
    assert torch.allclose(loaded.eval()(x, sigma, c), model.eval()(x, sigma, c), atol=1e-6)


def test_train_auggen_refuses_prototypes_of_another_dataset(tmp_path):
    from test_auggen_jobs import TINY_MODEL, _dataset
    from ray_jobs.config import ConfigError, load_config
    from ray_jobs.train_auggen import validate_train_auggen

    data = _dataset(tmp_path / "real")  # classes id0..id3
    prefix = tmp_path / "p" / "prototypes"
    save_prototypes(prefix, torch.randn(4, 16), 4, 0, ["id0", "id1", "x", "id3"])
    cfg = load_config(None, [f"run.output_dir={tmp_path / 'out'}", f"auggen.train.dataset={data}", "auggen.train.size=tiny",
                             TINY_MODEL, "auggen.train.batch_size=4", f"auggen.train.label_basis={prefix}"])
    with pytest.raises(ConfigError, match="row 2 is 'x'"):
        validate_train_auggen(cfg)
    missing = load_config(None, [f"run.output_dir={tmp_path / 'out'}", f"auggen.train.dataset={data}",
                                 "auggen.train.size=tiny", TINY_MODEL, "auggen.train.batch_size=4",
                                 "auggen.train.label_basis=stage1"])
    with pytest.raises(ConfigError, match="not found"):
        validate_train_auggen(missing)
    good = tmp_path / "q" / "prototypes"
    save_prototypes(good, torch.randn(6, 16), 4, 2, ["id0", "id1", "id2", "id3"])
    cfg_ok = load_config(None, [f"run.output_dir={tmp_path / 'out'}", f"auggen.train.dataset={data}", "auggen.train.size=tiny",
                                TINY_MODEL, "auggen.train.batch_size=4", f"auggen.train.label_basis={good}"])
    assert validate_train_auggen(cfg_ok)["model_config"].label_basis_dim == 16
