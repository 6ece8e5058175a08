"""build_codes / gif_collapse jobs on a tiny toy dataset (local pass and Ray tasks), codes usable by the head."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from fr.backbones import build_backbone, save_backbone
from fr.data.shards import build_dataset_info, write_dataset_json, write_shards
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from fr.gif.hier_codes import load_codes
from fr.gif.token_head import build_gif_head
from fr.head_registry import HeadSpec
from fr.margins import CosFace
from ray_jobs.config import load_config

IDS = 20


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gif_toy") / "train"
    cfg = ToyFaceConfig(num_identities=IDS, min_images=2, max_images=4, image_size=32)
    write_shards(d, iter_toy_records(cfg, range(IDS)), rows_per_shard=25)
    write_dataset_json(d, build_dataset_info(d, 32, {"source": "test"}))
    return d


def _cfg(tmp_path, toy_dir, *extra):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=t", f"gif.dataset={toy_dir}",
                              "gif.code_length=2", "gif.vocab_size=5", "gif.pixel_dim=8", "gif.optimise.steps=20",
                              "gif.optimise.batch=16", "gif.optimise.neighbours=4", "gif.optimise.partners=4",
                              "gif.spread_sample=0", "ray.num_cpus=2", *extra])


def _check_codes(out, toy_dir):
    book = load_codes(out)
    info = json.loads((toy_dir / "dataset.json").read_text())
    assert book.codes.shape == (IDS, 2) and len(np.unique(book.codes, axis=0)) == IDS
    assert book.identities == info["identities"]
    head = build_gif_head(HeadSpec(IDS, 8, CosFace(), identities=info["identities"], options={"codes": str(out)}))
    assert head.codes.shape == (IDS, 2)
    return book


@pytest.mark.slow
def test_build_codes_local_pixels_and_file(tmp_path, toy_dir, mlflow_uri):
    from ray_jobs.build_codes import run_build_codes

    summary = run_build_codes(_cfg(tmp_path, toy_dir, "gif.local_pass=true"))
    book = _check_codes(tmp_path / "codes" / "t", toy_dir)
    assert book.meta["source"]["kind"] == "pixels" and "objective_after" in summary
    assert (tmp_path / "codes" / "t" / "code_vector_spread.png").is_file()
    with pytest.raises(FileExistsError, match="gif.overwrite"):
        run_build_codes(_cfg(tmp_path, toy_dir, "gif.local_pass=true"))
    ids = json.loads((toy_dir / "dataset.json").read_text())["identities"]
    feats = np.random.default_rng(0).standard_normal((IDS, 6)).astype(np.float32)
    save_file({"features": feats[::-1].copy()}, str(tmp_path / "f.safetensors"),
              metadata={"identities": json.dumps(ids[::-1])})
    run_build_codes(_cfg(tmp_path, toy_dir, "gif.source=file", f"gif.features={tmp_path / 'f.safetensors'}",
                         "gif.overwrite=true", "gif.homogenise=false"))
    assert _check_codes(tmp_path / "codes" / "t", toy_dir).meta["source"]["kind"] == "file"
    with pytest.raises(ValueError, match="cannot hold"):
        run_build_codes(_cfg(tmp_path, toy_dir, "gif.local_pass=true", "gif.vocab_size=3", "gif.overwrite=true"))


@pytest.mark.slow
def test_build_codes_ray_embedder_and_collapse(tmp_path, toy_dir, ray_local, mlflow_uri):
    """Ray tasks over the shards with an FR backbone as the encoder; then the collapse report of that backbone."""
    from ray_jobs.build_codes import run_build_codes, run_gif_collapse

    net = build_backbone("iresnet_tiny", 16, base_width=8, layers=[1, 1, 1, 1], input_size=32)
    save_backbone(net, tmp_path / "bb")
    run_build_codes(_cfg(tmp_path, toy_dir, "gif.source=embedder", f"gif.embedder={tmp_path / 'bb'}"))
    assert _check_codes(tmp_path / "codes" / "t", toy_dir).meta["source"]["kind"] == "embedder"
    report = run_gif_collapse(_cfg(tmp_path, toy_dir, f"gif.collapse_backbone={tmp_path / 'bb'}",
                                   "gif.collapse_bins=2", f"gif.collapse_compare={{again: {tmp_path / 'bb'}}}"))
    assert len(report["bins"]) == 2 and "collapse/tail_minus_head/mean_max_cos" in report["metrics"]
    assert report["compare"]["again"]["metrics"] == report["metrics"]  # the same backbone measured twice
    with pytest.raises(FileNotFoundError, match="backbone 'gone'"):
        run_gif_collapse(_cfg(tmp_path, toy_dir, f"gif.collapse_backbone={tmp_path / 'bb'}",
                              f"gif.collapse_compare={{gone: {tmp_path / 'nothing'}}}"))
    assert (tmp_path / "gif_collapse" / "t" / "minority_collapse.png").is_file()


def test_embedder_defaults_to_the_runs_stage1_export(tmp_path, toy_dir):
    from ray_jobs import layout
    from ray_jobs.build_codes import embedder_prefix

    cfg = _cfg(tmp_path, toy_dir, "gif.source=embedder")
    with pytest.raises(ValueError, match="gif.embedder is empty and there is no stage-1 export"):
        embedder_prefix(cfg)
    save_backbone(build_backbone("iresnet_tiny", embedding_size=8, base_width=4, layers=[1, 1, 1, 1], input_size=32,
                                 auto_resize=True), layout.fr_backbone_prefix(cfg))
    assert embedder_prefix(cfg) == str(layout.fr_backbone_prefix(cfg).resolve())
    assert embedder_prefix(_cfg(tmp_path, toy_dir, "gif.embedder=/x/backbone")) == "/x/backbone"
