"""The seams: a third classifier head and a second generator, written only against the interfaces
(tests/seam_stubs.py), plug into the FR train step and the ``generate`` job with no job edits."""
import numpy as np
import pytest
import torch

from fr.backbones import build_backbone
from fr.fr_model import FRNet
from fr.head_registry import HeadSpec, build_head
from fr.heads import ClassifierHead
from fr.margins import build_margin
from fr.train_step import FRTrainStep
from fr.training import NonFiniteLossError
from generation.generator import GeneratorError, generator_class, load_generator
from ray_jobs.config import load_config
from ray_jobs.generate import run_generate
from ray_jobs.layout import generate_out_dir
from seam_stubs import FlatColourGenerator, LinearSoftmaxHead, save_flat_colour_generator
from test_train_dit_ray import make_stage1

EMB = 16


def _spec(**kw):
    return HeadSpec(num_classes=5, embedding_size=EMB, margin=build_margin("cosface", scale=16.0, margin=0.2), **kw)


def _step(head, max_nonfinite=3):
    torch.manual_seed(0)
    net = FRNet(build_backbone("iresnet_tiny", EMB, base_width=8, input_size=32), EMB, crfiqa=False)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, head)]
    return net, FRTrainStep(net, head, *opts, device=torch.device("cpu"), grad_clip=5.0, max_nonfinite=max_nonfinite)


def test_a_third_head_trains_through_the_fr_step_without_job_edits():
    head = build_head("seam_stubs:build_linear_head", _spec())
    assert isinstance(head, LinearSoftmaxHead)
    net, step = _step(head)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    before = head.fc.weight.detach().clone()
    out = step(images, labels, lr=0.1, step=0)
    assert np.isfinite(float(out["loss"])) and "stub_accuracy" in out and np.isfinite(out["grad_norm"])
    assert not torch.equal(before, head.fc.weight)  # the head's optimizer stepped
    state = head.full_state_dict()  # the interface's world-size-independent state round-trips
    other = build_head("seam_stubs:build_linear_head", _spec())
    other.load_full_state_dict(state)
    torch.testing.assert_close(other.fc.weight, head.fc.weight)


def test_heads_registry_errors_and_builtin_kinds():
    assert isinstance(build_head("softmax", _spec()), ClassifierHead)
    assert isinstance(build_head("partial_fc", _spec(num_virtual=2)), ClassifierHead)
    with pytest.raises(ValueError, match="unknown train_fr.head 'nope'.*partial_fc"):
        build_head("nope", _spec())
    with pytest.raises(ValueError, match="not synchronised across 2 workers"):
        build_head("softmax", _spec(world_size=2))
    with pytest.raises(ValueError, match="takes no head options"):
        build_head("partial_fc", _spec(options={"x": 1}))


def test_crfiqa_needs_a_head_with_centres():
    head = build_head("seam_stubs:build_linear_head", _spec())
    net = FRNet(build_backbone("iresnet_tiny", EMB, base_width=8, input_size=32), EMB, crfiqa=True)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (net, head)]
    with pytest.raises(ValueError, match="CR-FIQA needs class centres"):
        FRTrainStep(net, head, *opts, device=torch.device("cpu"))


def test_fr_step_skips_then_stops_on_non_finite_losses():
    head = build_head("seam_stubs:build_linear_head", _spec())
    net, step = _step(head, max_nonfinite=2)
    images, labels = torch.full((4, 3, 32, 32), float("nan")), torch.arange(4)
    assert np.isnan(step(images, labels, lr=0.1, step=0)["grad_norm"])  # skipped
    with pytest.raises(NonFiniteLossError, match="2 non-finite losses in a row"):
        step(images, labels, lr=0.1, step=1)


def test_generator_interface_errors(tmp_path):
    with pytest.raises(GeneratorError, match="unknown generator kind 'nope'"):
        generator_class("nope")
    with pytest.raises(GeneratorError, match="not a generation.generator.Generator"):
        generator_class("seam_stubs:LinearSoftmaxHead")
    gen = load_generator(save_flat_colour_generator(tmp_path / "g", 16, 8))
    assert isinstance(gen, FlatColourGenerator)
    with pytest.raises(GeneratorError, match="lack \\['landmarks'\\]"):
        gen.sample({"prototype": np.zeros((2, 8))}, [1, 2])
    with pytest.raises(GeneratorError, match="2 seeds but condition rows"):
        gen.sample({"prototype": np.zeros((3, 8)), "landmarks": np.zeros((3, 5, 2))}, [1, 2])


@pytest.mark.slow
def test_generate_job_runs_a_second_generator_and_records_its_kind(tmp_path, mlflow_uri, ray_local):
    make_stage1(tmp_path, "seam", 3, 2, 16, min_images=2, max_images=3, backbone=False)
    save_flat_colour_generator(tmp_path / "dit" / "seam", 16, 512)
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=seam", f"mlflow.tracking_uri={mlflow_uri}",
                             "generate.num_identities=2", "generate.images_per_identity=3", "generate.batch_size=4",
                             "generate.rows_per_shard=4", "generate.privacy_check=false"])
    info = run_generate(cfg)
    assert info.num_images == 6 and info.num_classes == 2
    assert info.provenance["generator"] == "seam_stubs:FlatColourGenerator"
    assert (generate_out_dir(cfg) / "dataset.json").is_file()
