"""Backbones: checkpoint key compatibility, forward semantics, registry, save/load."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fr.backbones import (
    BACKBONE_NAMES,
    BackboneMismatchError,
    build_backbone,
    load_backbone,
    load_insightface_pth,
    save_backbone,
)

# ---------------------------------------------------------------------------------------------
# Independent key lists, written from the published architecture descriptions (not from fr/).


def _bn(prefix: str, ch: int, affine: bool = True) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.running_mean": (ch,), f"{prefix}.running_var": (ch,), f"{prefix}.num_batches_tracked": ()}
    if affine:
        keys.update({f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)})
    return keys


def _blocks(layers, width):
    """Yield (stage, block_in_stage, block_index_overall, in_ch, out_ch) of the four-stage IR layout."""
    cin, i = width, 0
    for stage, n in enumerate(layers):
        cout = width * 2**stage
        for b in range(n):
            yield stage, b, i, cin, cout
            cin, i = cout, i + 1


def _ir_branch_keys(names, cin, cout) -> dict[str, tuple[int, ...]]:
    """BN(cin), conv3x3 cin->cout, BN(cout), PReLU(cout), conv3x3 cout->cout, BN(cout) under six names."""
    bn_a, conv_a, bn_b, prelu, conv_b, bn_c = names
    return {
        **_bn(bn_a, cin), f"{conv_a}.weight": (cout, cin, 3, 3), **_bn(bn_b, cout),
        f"{prelu}.weight": (cout,), f"{conv_b}.weight": (cout, cout, 3, 3), **_bn(bn_c, cout),
    }


def insightface_iresnet_keys(layers, width=64, emb=512, side=7) -> dict[str, tuple[int, ...]]:
    """arcface_torch iresnet: conv1/bn1/prelu, layer1..4 of IBasicBlock, bn2, fc, features."""
    keys = {"conv1.weight": (width, 3, 3, 3), **_bn("bn1", width), "prelu.weight": (width,)}
    for stage, b, _, cin, cout in _blocks(layers, width):
        p = f"layer{stage + 1}.{b}"
        keys.update(_ir_branch_keys([f"{p}.{m}" for m in ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")], cin, cout))
        if b == 0:  # every stage starts with stride 2 -> projection shortcut
            keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
            keys.update(_bn(f"{p}.downsample.1", cout))
    last = width * 8
    keys.update({**_bn("bn2", last), "fc.weight": (emb, last * side * side), "fc.bias": (emb,), **_bn("features", emb)})
    return keys


def adaface_irse_keys(layers, width=64, emb=512, side=7) -> dict[str, tuple[int, ...]]:
    """AdaFace net.py Backbone(mode='ir_se'): input_layer, body.<i>, output_layer."""
    keys = {"input_layer.0.weight": (width, 3, 3, 3), **_bn("input_layer.1", width), "input_layer.2.weight": (width,)}
    for _, _, i, cin, cout in _blocks(layers, width):
        p = f"body.{i}"
        keys.update(_ir_branch_keys([f"{p}.res_layer.{j}" for j in range(6)], cin, cout))
        hidden = max(1, cout // 16)
        keys[f"{p}.res_layer.se_block.fc1.weight"] = (hidden, cout, 1, 1)
        keys[f"{p}.res_layer.se_block.fc2.weight"] = (cout, hidden, 1, 1)
        if cin != cout:  # only then a conv shortcut; otherwise a parameter-free MaxPool2d(1, stride)
            keys[f"{p}.shortcut_layer.0.weight"] = (cout, cin, 1, 1)
            keys.update(_bn(f"{p}.shortcut_layer.1", cout))
    last = width * 8
    keys.update({**_bn("output_layer.0", last), "output_layer.3.weight": (emb, last * side * side)})
    keys.update({"output_layer.3.bias": (emb,), **_bn("output_layer.4", emb, affine=False)})
    return keys


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


FULL_SIZES = [
    ("iresnet18", insightface_iresnet_keys, [2, 2, 2, 2]),
    ("iresnet34", insightface_iresnet_keys, [3, 4, 6, 3]),
    ("iresnet50", insightface_iresnet_keys, [3, 4, 14, 3]),
    ("iresnet100", insightface_iresnet_keys, [3, 13, 30, 3]),
    ("iresnet200", insightface_iresnet_keys, [6, 26, 60, 6]),
    ("ir_se50", adaface_irse_keys, [3, 4, 14, 3]),
]


@pytest.mark.parametrize("name,reference,layers", FULL_SIZES)
def test_full_size_keys_and_shapes(name, reference, layers):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_backbone(name)
    assert _shapes(model) == reference(layers)


@pytest.mark.parametrize("name", ["iresnet18", "ir_se50"])  # one per family: meta forwards are slow-ish
def test_full_size_output_shapes(name):
    with torch.device("meta"):
        emb, fmap = build_backbone(name).forward_features(torch.empty(2, 3, 112, 112))
    assert tuple(emb.shape) == (2, 512) and tuple(fmap.shape) == (2, 512, 7, 7)


def test_known_parameter_counts():
    # Published sizes: insightface r100 ~65.2M, r50 ~43.6M parameters; IR-SE-50 ~43.8M.
    counts = {}
    for name in ("iresnet50", "iresnet100", "ir_se50"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in build_backbone(name).parameters())
    assert 65.0e6 < counts["iresnet100"] < 65.4e6
    assert 43.4e6 < counts["iresnet50"] < 43.8e6
    assert 43.6e6 < counts["ir_se50"] < 44.0e6


def test_tiny_keys_match_reference_layouts():
    assert _shapes(build_backbone("iresnet_tiny", embedding_size=32)) == insightface_iresnet_keys([1] * 4, 8, 32)
    assert _shapes(build_backbone("ir_se_tiny", embedding_size=32)) == adaface_irse_keys([1] * 4, 16, 32)
    custom = build_backbone("iresnet_tiny", embedding_size=16, layers=[1, 2, 1, 1], base_width=4, input_size=32)
    assert _shapes(custom) == insightface_iresnet_keys([1, 2, 1, 1], 4, 16, side=2)


# ---------------------------------------------------------------------------------------------
# Forward semantics against a functional re-implementation from the state_dict.


def _bn_f(x, sd, p):
    mean, var = sd[f"{p}.running_mean"], sd[f"{p}.running_var"]
    return F.batch_norm(x, mean, var, sd.get(f"{p}.weight"), sd.get(f"{p}.bias"), eps=1e-5)


def _ir_branch(x, sd, names, stride):
    """BN, conv3x3, BN, PReLU, conv3x3(stride), BN with the given six key prefixes."""
    bn_a, conv_a, bn_b, prelu, conv_b, bn_c = names
    y = F.conv2d(_bn_f(x, sd, bn_a), sd[f"{conv_a}.weight"], padding=1)
    y = F.prelu(_bn_f(y, sd, bn_b), sd[f"{prelu}.weight"])
    return _bn_f(F.conv2d(y, sd[f"{conv_b}.weight"], stride=stride, padding=1), sd, bn_c)


def _head(x, sd, bn2, fc, feat):
    x = _bn_f(x, sd, bn2).flatten(1)
    return _bn_f(F.linear(x, sd[f"{fc}.weight"], sd[f"{fc}.bias"]), sd, feat)


def reference_iresnet(x, sd, layers):
    x = F.prelu(_bn_f(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"), sd["prelu.weight"])
    for s, n in enumerate(layers, start=1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if b == 0 else 1
            names = [f"{p}.{m}" for m in ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")]
            short = x if b else _bn_f(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), sd, f"{p}.downsample.1")
            x = _ir_branch(x, sd, names, stride) + short
    return _head(x, sd, "bn2", "fc", "features")


def reference_irse(x, sd, layers):
    x = _bn_f(F.conv2d(x, sd["input_layer.0.weight"], padding=1), sd, "input_layer.1")
    x = F.prelu(x, sd["input_layer.2.weight"])
    i = 0
    for n in layers:
        for b in range(n):
            p, stride = f"body.{i}", 2 if b == 0 else 1
            y = _ir_branch(x, sd, [f"{p}.res_layer.{j}" for j in range(6)], stride)
            g = y.mean((2, 3), keepdim=True)
            se = f"{p}.res_layer.se_block"
            g = torch.sigmoid(F.conv2d(F.relu(F.conv2d(g, sd[f"{se}.fc1.weight"])), sd[f"{se}.fc2.weight"]))
            if f"{p}.shortcut_layer.0.weight" in sd:
                short = F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride)
                short = _bn_f(short, sd, f"{p}.shortcut_layer.1")
            else:
                short = x[:, :, ::stride, ::stride]
            x, i = y * g + short, i + 1
    return _head(x, sd, "output_layer.0", "output_layer.3", "output_layer.4")


def _randomise_bn_stats(model):
    """Give every BN non-trivial running stats / affine params so eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name,reference,layers", [
    ("iresnet_tiny", reference_iresnet, [1, 2, 1, 1]),
    ("ir_se_tiny", reference_irse, [1, 2, 1, 1]),
])
def test_forward_matches_functional_reference(name, reference, layers):
    torch.manual_seed(0)
    model = _randomise_bn_stats(build_backbone(name, embedding_size=24, layers=layers, input_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x, model.state_dict(), layers)
        got, fmap = model.forward_features(x)
    assert got.shape == (2, 24) and fmap.shape[-2:] == (2, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["iresnet_tiny", "ir_se_tiny"])
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size=32)
    emb = model(torch.randn(2, 3, 112, 112))
    assert emb.shape == (2, 32)
    emb.pow(2).sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_iresnet_embedding_bn_scale_is_frozen_like_insightface():
    model = build_backbone("iresnet_tiny")
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))


def test_fp16_option_keeps_fp32_embedding():
    torch.manual_seed(0)
    ref = build_backbone("iresnet_tiny", embedding_size=16, input_size=32).eval()
    half = build_backbone("iresnet_tiny", embedding_size=16, input_size=32, fp16=True).eval()
    half.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        emb16, fmap16 = half.forward_features(x)
        emb32 = ref(x)
    assert emb16.dtype == torch.float32 and fmap16.dtype != torch.float32
    assert F.cosine_similarity(emb16, emb32).min() > 0.95


def test_bad_input_shape_is_a_clear_error():
    model = build_backbone("iresnet_tiny")
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\).*\(2, 3, 96, 96\)"):
        model(torch.randn(2, 3, 96, 96))


# ---------------------------------------------------------------------------------------------
# Registry and checkpoints.


def test_registry_names_and_errors():
    required = {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "ir_se50", "iresnet_tiny", "ir_se_tiny"}
    assert required <= set(BACKBONE_NAMES)
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*iresnet100.*ir_se50"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="unknown option.*'width'"):
        build_backbone("iresnet_tiny", width=3)
    with pytest.raises(ValueError, match="unknown option.*'layers'"):
        build_backbone("iresnet50", layers=[1, 1, 1, 1])  # depth is fixed by the name
    with pytest.raises(ValueError, match="input_size"):
        build_backbone("iresnet_tiny", input_size=100)


SMALL = {"embedding_size": 16, "input_size": 32}  # 32x32 inputs keep these tests fast


def _trained_tiny(name="iresnet_tiny"):
    torch.manual_seed(1)
    model = build_backbone(name, dropout=0.0, **SMALL)
    model(torch.randn(4, 3, 32, 32))  # train-mode pass updates BN running stats
    return model.eval()


@pytest.mark.parametrize("name", ["iresnet_tiny", "ir_se_tiny"])
def test_safetensors_round_trip_identical_outputs(tmp_path, name):
    model = _trained_tiny(name)
    prefix = save_backbone(model, tmp_path / "sub" / "net")
    assert (tmp_path / "sub" / "net.safetensors").is_file()
    config = json.loads((tmp_path / "sub" / "net.json").read_text())
    assert config == {"name": name, "kwargs": {**SMALL, "dropout": 0.0}}
    loaded = load_backbone(str(prefix) + ".safetensors", expected_name=name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_load_backbone_expected_name_mismatch(tmp_path):
    save_backbone(build_backbone("iresnet_tiny"), tmp_path / "net")
    with pytest.raises(BackboneMismatchError, match="checkpoint is iresnet_tiny, expected ir_se_tiny"):
        load_backbone(tmp_path / "net", expected_name="ir_se_tiny")
    with pytest.raises(FileNotFoundError, match="other.json"):
        load_backbone(tmp_path / "other")


def test_save_backbone_needs_a_known_name(tmp_path):
    model = build_backbone("iresnet_tiny")
    with pytest.raises(ValueError, match="unknown backbone 'r50'"):
        save_backbone(model, tmp_path / "x", {"name": "r50"})
    with pytest.raises(ValueError, match="unknown config key.*'seed'"):
        save_backbone(model, tmp_path / "x", {"name": "iresnet_tiny", "seed": 1})
    with pytest.raises(ValueError, match="needs a 'name'"):
        save_backbone(torch.nn.Linear(2, 2), tmp_path / "x")


def test_insightface_pth_strict_load_via_weights_only(tmp_path):
    source = _trained_tiny()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    target = build_backbone("iresnet_tiny", **SMALL)
    load_insightface_pth(target, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), target.eval()(x))
    # DDP-style "module." prefix is stripped on request.
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    load_insightface_pth(build_backbone("iresnet_tiny", **SMALL), path, prefix="module.")


def test_insightface_pth_errors_name_the_keys(tmp_path):
    sd = _trained_tiny().state_dict()
    sd["extra.weight"] = sd.pop("layer2.0.bn1.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    expected = r"missing keys \['layer2.0.bn1.weight'\].*unexpected keys \['extra.weight'\]"
    with pytest.raises(BackboneMismatchError, match=expected):
        load_insightface_pth(build_backbone("iresnet_tiny", **SMALL), path)
    sd["layer2.0.bn1.weight"] = sd.pop("extra.weight")
    torch.save(sd, path)
    with pytest.raises(BackboneMismatchError, match=r"fc.weight: checkpoint \(16, 256\) vs model \(8, 256\)"):
        load_insightface_pth(build_backbone("iresnet_tiny", embedding_size=8, input_size=32), path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_insightface_pth(build_backbone("iresnet_tiny"), path)
