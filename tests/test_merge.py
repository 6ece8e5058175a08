import numpy as np
import pytest

from fr.data.images import encode_image
from fr.data.merge import merge_datasets
from fr.data.shards import ShardError, build_dataset_info, iter_records, list_shards, write_dataset_json, write_shards


def _dataset(path, identities, per_class, source, seed):
    rng = np.random.default_rng(seed)
    recs = [{"image": encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "png"), "label": c,
             "identity": name, "landmarks": np.zeros(10, np.float32), "source": source}
            for c, name in enumerate(identities) for _ in range(per_class)]
    write_shards(path, recs, rows_per_shard=3)
    write_dataset_json(path, build_dataset_info(path, 16, {"test": True}))
    return recs


def test_merge_relabels_by_identity(tmp_path):
    real = _dataset(tmp_path / "real", ["ann", "bob"], 2, "real", 0)
    aug = _dataset(tmp_path / "aug", ["bob", "ann"], 1, "synthetic", 1)  # real-ID augmentation
    virt = _dataset(tmp_path / "virt", ["virtual_0", "virtual_1"], 2, "synthetic", 2)
    info = merge_datasets([tmp_path / "real", tmp_path / "aug", tmp_path / "virt"], tmp_path / "mix")
    assert info.identities == ["ann", "bob", "virtual_0", "virtual_1"]
    assert info.images_per_class == [3, 3, 2, 2] and info.num_images == 10
    rows = [r for p in list_shards(tmp_path / "mix") for r in iter_records(p)]
    assert [r["image"] for r in rows] == [r["image"] for r in real + aug + virt]
    assert all(info.identities[r["label"]] == r["identity"] for r in rows)
    assert [r["source"] for r in rows].count("synthetic") == 6
    # finished: returned as is for the same inputs; other or regenerated inputs are refused, not reused
    assert merge_datasets([tmp_path / "real", tmp_path / "aug", tmp_path / "virt"], tmp_path / "mix").num_images == 10
    with pytest.raises(ShardError, match="earlier version"):
        merge_datasets([tmp_path / "real"], tmp_path / "mix")
    _dataset(tmp_path / "virt2", ["virtual_0", "virtual_1"], 3, "synthetic", 3)
    for p in list_shards(tmp_path / "virt"):
        p.unlink()
    for p in list_shards(tmp_path / "virt2"):
        p.rename(tmp_path / "virt" / p.name)
    (tmp_path / "virt2" / "dataset.json").replace(tmp_path / "virt" / "dataset.json")
    with pytest.raises(ShardError, match=r"earlier version of \[.*virt'\]"):
        merge_datasets([tmp_path / "real", tmp_path / "aug", tmp_path / "virt"], tmp_path / "mix")


def test_merge_errors(tmp_path):
    _dataset(tmp_path / "a", ["x"], 2, "real", 0)
    with pytest.raises(ShardError, match="dataset.json"):
        merge_datasets([tmp_path / "a", tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(ShardError, match="unfinished merge"):
        merge_datasets([tmp_path / "a"], tmp_path / "partial")
