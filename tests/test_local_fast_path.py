"""Local fast paths (issue 15 part 4): the choice rule, and identical outputs in the driver and through
Ray Data for the embedding pass (exactly equal arrays) and generation (the same shard bytes)."""
from pathlib import Path

import numpy as np
import pytest
import torch

import ray_jobs.local_path as local_path
from evaluation.embed import embed_shards, load_evaluator
from evaluation.embedding_cache import evaluator_key
from fr.backbones import build_backbone, save_backbone
from fr.data.alignment import template_for_size
from fr.data.shards import build_dataset_info, list_shards, write_dataset_json, write_shards
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records
from fr.prototypes import save_prototypes
from generation.conditions import plan_generation
from generation.dit import build_dit, save_dit
from ray_jobs.config import ConfigError, RaySection, load_config
from ray_jobs.embedding_pass import EvaluatorFiles, embed_shards_in_process, embed_shards_on_ray
from ray_jobs.shard_stream import ActorPool, plan_batches, stream_plan_to_shards

SIDE = 32


class NoTracker:
    def metrics(self, values, step=None):
        pass


@pytest.fixture()
def not_started(monkeypatch):
    """As before any Ray starts in this process (another test may have started the session's Ray)."""
    monkeypatch.setattr(local_path.ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_choice_rule(not_started, monkeypatch):
    choose = local_path.choose_path
    big = local_path.LOCAL_MAX_ROWS["embedding"] + 1
    assert choose(RaySection(), "embedding", big, actors=1).in_process  # one actor: nothing to parallelise
    assert choose(RaySection(), "embedding", 100, actors=4).in_process  # small work
    assert not choose(RaySection(), "embedding", big, actors=4).in_process  # large work on a local pool
    assert choose(RaySection(address="local"), "generation", 10, actors=2).in_process
    assert not choose(RaySection(fast_local="never"), "embedding", 10, actors=1).in_process
    assert not choose(RaySection(address="10.0.0.1:6379"), "embedding", 10, actors=1).in_process
    assert choose(RaySection(address="auto", fast_local="always"), "embedding", big, actors=4).in_process
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # joining a live head is a cluster
    assert not choose(RaySection(), "generation", 10, actors=1).in_process
    with pytest.raises(ConfigError, match="ray.fast_local must be one of auto|always|never"):
        choose(RaySection(fast_local="fast"), "embedding", 10, actors=1)


def test_ray_started_here_counts_as_local(monkeypatch):
    monkeypatch.setattr(local_path.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(local_path, "local_without_dashboard", lambda: False)  # joined a cluster
    assert not local_path.ray_is_local(RaySection())
    monkeypatch.setattr(local_path, "local_without_dashboard", lambda: True)
    assert local_path.ray_is_local(RaySection(address="ignored once Ray runs"))


def test_batches_never_span_chunks():
    chunks = [(0, 5), (5, 10), (10, 12)]
    got = plan_batches(chunks, [0, 2], 3)
    assert got == [{"chunk": 0, "start": 0, "stop": 3}, {"chunk": 0, "start": 3, "stop": 5},
                   {"chunk": 2, "start": 10, "stop": 12}]


# ------------------------------------------------------------------------------------------------
# embedding pass


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory):
    """Two shards of 32 px toy faces (uneven sizes) and a tiny evaluator."""
    root = tmp_path_factory.mktemp("fastpath")
    data = root / "train"
    toy = ToyFaceConfig(num_identities=6, image_size=SIDE, min_images=5, max_images=9, seed=3)
    write_shards(data, iter_toy_records(toy, range(toy.num_identities)), rows_per_shard=23)
    write_dataset_json(data, build_dataset_info(data, SIDE, {"source": "toy"}))
    torch.manual_seed(0)
    prefix = save_backbone(build_backbone("iresnet_tiny", 64, base_width=8, input_size=SIDE), root / "backbone")
    files = EvaluatorFiles(Path(prefix), None, None, True, evaluator_key(prefix, None, True))
    return data, files


def _embed_cfg(*extra):
    return load_config(None, ["evaluate.batch_size=7", "evaluate.cpus_per_actor=1", *extra])


def test_in_process_embedding_is_the_plain_loop(toy_set):
    data, files = toy_set
    shards = list_shards(data)
    fast = embed_shards_in_process(_embed_cfg(), files, shards, {data: SIDE})
    loop = embed_shards(load_evaluator(files.backbone, None, flip=True), shards, SIDE, batch_size=7)
    assert len(shards) == 2
    embed_shards_in_process(_embed_cfg("evaluate.cpus_per_actor=2"), files, shards[:1], {data: SIDE})
    assert torch.get_num_threads() == 1  # the pass (2 threads, as its actor) restored the test's thread count
    for p in shards:
        np.testing.assert_array_equal(fast[p].embeddings, loop[p].embeddings)
        np.testing.assert_array_equal(fast[p].labels, loop[p].labels)


@pytest.mark.slow
def test_embedding_paths_give_identical_arrays(toy_set, ray_local):
    data, files = toy_set
    shards = list_shards(data)
    fast = embed_shards_in_process(_embed_cfg(), files, shards, {data: SIDE})
    on_ray = embed_shards_on_ray(_embed_cfg("evaluate.num_actors=2", "evaluate.cpus_per_actor=0.5"), files,
                                 shards, {data: SIDE})
    for p in shards:
        assert fast[p].embeddings.dtype == on_ray[p].embeddings.dtype == np.float32
        np.testing.assert_array_equal(fast[p].embeddings, on_ray[p].embeddings)
        np.testing.assert_array_equal(fast[p].labels, on_ray[p].labels)


# ------------------------------------------------------------------------------------------------
# generation


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A tiny 32 px DiT (perturbed past adaLN-Zero, so faces depend on the condition), prototypes, landmarks."""
    root = tmp_path_factory.mktemp("fastgen")
    torch.manual_seed(0)
    model = build_dit("tiny", image_size=SIDE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_dit(model, root / "dit")
    save_prototypes(root / "prototypes", torch.randn(5, 512), 2, 3)
    rng = np.random.default_rng(0)
    landmarks = template_for_size(SIDE).astype(np.float32)[None] + rng.normal(0, 0.5, (4, 5, 2)).astype(np.float32)
    sampler = {"model_dir": str(root / "dit"), "prototypes_prefix": str(root / "prototypes"),
               "landmark_sets": landmarks, "output_size": SIDE, "steps": 2, "guidance": 2.0, "eta": 0.0}
    plan = plan_generation(2, 3, "virtual", 0, 4, len(landmarks), seed=0)  # 12 rows
    return root, plan, sampler


def _generate(generator, name, mode, rows_per_shard=5, batch_size=3):
    root, plan, sampler = generator
    out = root / name
    stats = stream_plan_to_shards(plan, sampler, out, rows_per_shard, ActorPool(num_actors=1, batch_size=batch_size),
                                  NoTracker(), ray_cfg=RaySection(fast_local=mode))
    return out, stats


def test_in_process_generation_resumes_missing_shards(generator):
    out, stats = _generate(generator, "fast", "always")
    shards = list_shards(out)
    assert stats == {"shards_total": 3, "shards_resumed": 0, "rows_generated": 12} and len(shards) == 3
    before = {p.name: p.read_bytes() for p in shards}
    shards[1].unlink()
    _, again = _generate(generator, "fast", "always")
    assert again == {"shards_total": 3, "shards_resumed": 2, "rows_generated": 5}
    assert {p.name: p.read_bytes() for p in list_shards(out)} == before  # the same bytes regenerated


@pytest.mark.slow
def test_generation_paths_write_the_same_shards(generator, ray_local):
    fast, _ = _generate(generator, "fast_cmp", "always")
    on_ray, stats = _generate(generator, "ray_cmp", "never")
    assert stats["rows_generated"] == 12
    names = [p.name for p in list_shards(fast)]
    assert names == [p.name for p in list_shards(on_ray)] == ["part-00000.parquet", "part-00001.parquet",
                                                              "part-00002.parquet"]
    for name in names:
        assert (fast / name).read_bytes() == (on_ray / name).read_bytes()
