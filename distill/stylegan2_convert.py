"""Convert an NVlabs StyleGAN2 ``.pkl`` to safetensors in the ``G_ema`` key layout, never running its code.

NVlabs network pickles carry the source code of their classes (``torch_utils.persistence``) and run it
when unpickled normally. :class:`InertUnpickler` instead maps every global the pickle names to an inert
stand-in: the persistence hook becomes a record of its metadata (the source text is kept as a string and
never executed), ``EasyDict`` a dict, and any other name an :class:`Opaque` placeholder that records the
arguments it is "called" with and does nothing. Only tensors are rebuilt, by torch's own rebuild helpers,
their storages read with ``torch.load(weights_only=True)``. The module tree of ``G_ema`` is then walked
(``_parameters``, ``_buffers``, ``_modules`` of each recorded state) into a flat state_dict.

    python -m distill.stylegan2_convert network-snapshot.pkl out_dir/   # writes G_ema.safetensors + G_ema.json
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from distill.latent_generator import LatentGeneratorError
from distill.stylegan2 import CONFIG_FILE, WEIGHTS_FILE, StyleGAN2, config_from_state


class Opaque:
    """Stands in for any global of the pickle: calling, ``__setstate__`` and item/attribute writes only record."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_record"] = {"args": args, "kwargs": kwargs, "state": None, "items": {}}

    def __call__(self, *args, **kwargs):
        return Opaque(*args, **kwargs)

    def __setstate__(self, state):
        self.__dict__["_record"]["state"] = state

    def __setitem__(self, key, value):
        self.__dict__["_record"]["items"][key] = value

    def append(self, value):  # list-like reconstruction
        self.__dict__["_record"].setdefault("list", []).append(value)

    def extend(self, values):
        self.__dict__["_record"].setdefault("list", []).extend(values)


def _opaque_global(module: str, name: str):
    return type(f"Opaque[{module}.{name}]", (Opaque,), {"global_name": f"{module}.{name}"})


class PersistentRecord(dict):
    """The metadata of an NVlabs persistent object (``type``, ``class_name``, ``module_src`` text, ``state``)."""


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise LatentGeneratorError("persistent object without a metadata dict")
    return PersistentRecord(meta)


class _InertDict(dict):
    """``dnnlib.EasyDict`` without its attribute magic."""


def _load_storage(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


_SAFE = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): _InertDict,
    ("dnnlib", "EasyDict"): _InertDict,
}


class InertUnpickler(pickle.Unpickler):
    """Globals outside :data:`_SAFE` become :class:`Opaque` stand-ins: nothing of the pickle's code runs."""

    def __init__(self, file):
        super().__init__(file)
        self.opaque: set[str] = set()

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        self.opaque.add(f"{module}.{name}")
        return _opaque_global(module, name)


def read_inert(path: str | Path) -> tuple[Any, set[str]]:
    """The pickle's object tree with every non-tensor global inert, and the names that were made inert."""
    with open(path, "rb") as f:
        unpickler = InertUnpickler(f)
        data = unpickler.load()
    return data, unpickler.opaque


def module_tensors(record: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a recorded module (its state's ``_parameters``, ``_buffers`` and ``_modules``) into a state_dict."""
    state = record.get("state") if isinstance(record, PersistentRecord) else getattr(record, "_record", {}).get("state")
    if not isinstance(state, dict):
        raise LatentGeneratorError(f"{prefix or 'G_ema'}: not a recorded torch module (no state dict)")
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for k, v in (state.get(group) or {}).items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v.detach().clone().contiguous()
    for k, sub in (state.get("_modules") or {}).items():
        if sub is not None:
            out.update(module_tensors(sub, f"{prefix}{k}."))
    return out


def convert(pkl: str | Path, out_dir: str | Path, key: str = "G_ema", overwrite: bool = False) -> Path:
    """Extract ``key`` of an NVlabs pickle into ``out_dir/G_ema.{safetensors,json}``; checked against our
    StyleGAN2 (strict key and shape match) before anything is written."""
    out_dir = Path(out_dir)
    if (out_dir / WEIGHTS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / WEIGHTS_FILE} exists (pass --overwrite to replace it)")
    data, opaque = read_inert(pkl)
    if not isinstance(data, dict) or key not in data:
        raise LatentGeneratorError(f"{pkl}: no {key!r} entry (keys: {sorted(data) if isinstance(data, dict) else type(data)})")
    state = module_tensors(data[key])
    cfg = config_from_state(state)
    init = (data[key].get("state") or {}).get("init_kwargs") if isinstance(data[key], PersistentRecord) else None
    if isinstance(init, dict):
        clamp = (init.get("synthesis_kwargs") or {}).get("conv_clamp")
        cfg["conv_clamp"] = clamp
    model = StyleGAN2(**cfg)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LatentGeneratorError(f"{pkl}: {key} does not fit the StyleGAN2 G_ema layout: missing {missing[:8]}, "
                                   f"unexpected {unexpected[:8]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps({**cfg, "channels": {str(k): v for k, v in cfg["channels"].items()}},
                                                  indent=2))
    (out_dir / "conversion.json").write_text(json.dumps({"source": str(pkl), "inert_globals": sorted(opaque)}, indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pkl")
    ap.add_argument("out_dir")
    ap.add_argument("--key", default="G_ema")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    print(convert(args.pkl, args.out_dir, args.key, args.overwrite))


if __name__ == "__main__":
    main()
