import numpy as np
import pytest

from fr.data.face_dataset import FaceShardDataset
from fr.data.images import decode_image, encode_image
from fr.data.shards import (ShardError, build_dataset_info, check_labels, iter_records, list_shards, read_dataset_json,
                       write_dataset_json, write_shard, write_shards)


def _records(n_classes=3, per_class=4, size=112, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_classes):
        for _ in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            out.append({"image": encode_image(img, "png"), "label": c, "identity": f"id{c}",
                        "landmarks": rng.random(10).astype(np.float32) * size, "source": "real"})
    return out


def test_write_read_round_trip_and_manifest(tmp_path):
    recs = _records()
    paths = write_shards(tmp_path, recs, rows_per_shard=5)
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    back = [r for p in list_shards(tmp_path) for r in iter_records(p)]
    assert len(back) == len(recs)
    for a, b in zip(recs, back):
        assert a["image"] == b["image"] and a["label"] == b["label"] and a["identity"] == b["identity"]
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    info = build_dataset_info(tmp_path, 112, {"source": "test"})
    write_dataset_json(tmp_path, info)
    again = read_dataset_json(tmp_path)
    assert again.num_classes == 3 and again.num_images == 12 and again.images_per_class == [4, 4, 4]
    assert again.identities == ["id0", "id1", "id2"]


def test_refuses_overwrite_and_bad_records(tmp_path):
    recs = _records(1, 2)
    write_shard(tmp_path / "part-00000.parquet", recs)
    with pytest.raises(ShardError, match="refusing to overwrite"):
        write_shard(tmp_path / "part-00000.parquet", recs)
    bad = dict(recs[0], landmarks=[1.0] * 9)
    with pytest.raises(ShardError, match="record 0.*landmarks"):
        write_shard(tmp_path / "part-00001.parquet", [bad])
    with pytest.raises(ShardError, match="source"):
        write_shard(tmp_path / "part-00001.parquet", [dict(recs[0], source="fake")])
    assert not (tmp_path / "part-00001.parquet").exists()


def test_empty_dir_and_label_gap(tmp_path):
    with pytest.raises(ShardError, match="no part"):
        list_shards(tmp_path)
    recs = [r for r in _records(3, 2) if r["label"] != 1]
    write_shards(tmp_path, recs)
    with pytest.raises(ShardError, match="not contiguous.*\\[1\\]"):
        build_dataset_info(tmp_path, 112, {})


def test_torch_dataset_decodes_and_skips_corrupt(tmp_path):
    recs = _records(2, 3)
    recs[2] = dict(recs[2], image=b"not an image")
    write_shards(tmp_path, recs, rows_per_shard=4)
    ds = FaceShardDataset(tmp_path)
    assert len(ds) == 6
    x, y = ds[0]
    assert x.shape == (3, 112, 112) and y == 0
    expected = (decode_image(recs[0]["image"]).astype(np.float32) - 127.5) / 128
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    x2, y2 = ds[2]  # corrupt -> next valid record (index 3), counted
    assert ds.num_skipped == 1 and y2 == 1
    strict = FaceShardDataset(tmp_path, skip_corrupt=False)
    with pytest.raises(ValueError, match="record 2"):
        strict[2]


def test_check_labels_names_shard(tmp_path):
    write_shards(tmp_path, _records(3, 2), rows_per_shard=4)
    check_labels(tmp_path, 3)
    with pytest.raises(ShardError, match="part-00001.parquet: label 2 outside the class range \\[0, 2\\)"):
        check_labels(tmp_path, 2)


def test_resize_faces_down_up_and_identity():
    from fr.data.images import resize_faces

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert resize_faces(faces, 32) is faces
    down = resize_faces(faces, 16)
    # area averaging: each output pixel is the mean of a 2x2 block
    block = faces.reshape(3, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert down.shape == (3, 16, 16, 3) and np.abs(down - block).max() <= 0.5 + 1e-9
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    assert (resize_faces(flat, 24) == 77).all()  # bicubic keeps a constant image constant
    with pytest.raises(ValueError, match="square"):
        resize_faces(faces[:, :, :30], 16)
