"""StyleGAN2 G_ema in plain torch: NVlabs key layout, strict loading, the 256 px crop, the inert .pkl converter."""
from __future__ import annotations

import collections
import os
import pickle
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.latent_generator import LatentGeneratorError
from distill.stylegan2 import (CROP_256, StyleGAN2, StyleGAN2Generator, align_ffhq256, fir_filter, load_stylegan2,
                               save_stylegan2, upsample2x)
from distill.stylegan2_convert import convert, read_inert

SMALL = dict(z_dim=16, w_dim=16, resolution=32, channel_base=256, channel_max=16)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return StyleGAN2(**{**SMALL, **kw})


def test_nvlabs_key_layout():
    keys = set(_model().state_dict())
    assert {"mapping.w_avg", "mapping.fc0.weight", "mapping.fc7.bias", "synthesis.b4.const",
            "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.noise_strength", "synthesis.b4.conv1.noise_const",
            "synthesis.b4.torgb.weight", "synthesis.b8.conv0.resample_filter", "synthesis.b8.conv0.weight",
            "synthesis.b32.conv1.affine.bias", "synthesis.b32.torgb.bias", "synthesis.b32.resample_filter"} <= keys
    assert "synthesis.b4.conv0.weight" not in keys
    m = _model(resolution=256, channel_base=16384, channel_max=512)
    assert m.synthesis.b4.conv1.weight.shape[0] == 512 and m.synthesis.b256.conv1.weight.shape[0] == 64
    assert m.synthesis.num_ws == 14


def test_load_strict_roundtrip_and_errors(tmp_path):
    m = _model()
    d = save_stylegan2(m, tmp_path / "g")
    again = load_stylegan2(d)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    state = load_file(str(d / "G_ema.safetensors"))
    del state["synthesis.b16.conv1.affine.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(LatentGeneratorError, match="missing.*synthesis.b16.conv1.affine.weight"):
        load_stylegan2(tmp_path / "missing.safetensors")
    state = dict(load_file(str(d / "G_ema.safetensors")), **{"synthesis.extra": torch.zeros(1)})
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(LatentGeneratorError, match="unexpected.*synthesis.extra"):
        load_stylegan2(tmp_path / "extra.safetensors")
    with pytest.raises(FileNotFoundError, match="stylegan2_convert"):
        load_stylegan2(tmp_path / "none")


def test_generator_output_shape_range_and_determinism(tmp_path):
    gen = StyleGAN2Generator(load_stylegan2(save_stylegan2(_model(), tmp_path / "g")))
    w = gen.to_w(gen.sample_latents(3, 0))
    assert w.shape == (3, 16)
    x = gen.synthesize(w)
    assert x.shape == (3, 3, 112, 112) and float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(gen.synthesize(w), x)  # noise seeded from each w
    torch.testing.assert_close(gen.synthesize(w[2:]), x[2:], atol=1e-5, rtol=0)
    assert not torch.allclose(gen.synthesize(w + 0.5), x)


def test_upsample_and_crop():
    x = torch.ones(1, 2, 4, 4)
    up = upsample2x(x, fir_filter())
    assert up.shape == (1, 2, 8, 8)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones(1, 2, 4, 4))  # a constant stays constant inside
    img = torch.linspace(-2, 2, 256).expand(1, 3, 256, 256)
    out = align_ffhq256(img)
    assert out.shape == (1, 3, 112, 112) and float(out.min()) >= 0 and float(out.max()) <= 1
    y0, y1, x0, x1 = CROP_256
    assert (y1 - y0, x1 - x0) == (213, 213)


# ------------------------------------------------------------------------------------------------
# a pickle shaped like NVlabs' (persistent objects carrying source code), built without their code

def _fake_persistence(monkeypatch):
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what NVlabs would run: exec(meta["module_src"])
        exec(meta["module_src"])  # noqa: S102 - never reached by the converter

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return _reconstruct_persistent_obj


class _Persistent:
    def __init__(self, fn, module, src):
        self.fn, self.module, self.src = fn, module, src

    def __reduce__(self):
        m = self.module
        state = {"_parameters": collections.OrderedDict((k, torch.nn.Parameter(v.detach().clone()))
                                                        for k, v in m._parameters.items()),
                 "_buffers": collections.OrderedDict(m._buffers),
                 "_modules": collections.OrderedDict((k, _Persistent(self.fn, v, self.src)) for k, v in m._modules.items()),
                 "training": False, "init_kwargs": {"synthesis_kwargs": {"conv_clamp": 256}}}
        return self.fn, ({"type": "class", "version": 4, "class_name": type(m).__name__, "module_src": self.src,
                          "state": state},)


class _Malicious:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_converter_extracts_tensors_and_runs_no_code(tmp_path, monkeypatch):
    marker_src, marker_sys = tmp_path / "ran_module_src", tmp_path / "ran_os_system"
    fn = _fake_persistence(monkeypatch)
    m = _model(3)
    payload = {"G_ema": _Persistent(fn, m, f"open({str(marker_src)!r}, 'w').write('pwned')"),
               "evil": _Malicious(marker_sys), "training_set_kwargs": {"resolution": 32}}
    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(pickle.dumps(payload))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # as on a machine without NVlabs code
    out = convert(pkl, tmp_path / "converted")
    assert not marker_src.exists() and not marker_sys.exists()
    _, inert = read_inert(pkl)
    assert any(name.endswith(".system") for name in inert)
    again = load_stylegan2(out)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(pkl, out)
