import hashlib

import numpy as np

from fr.data.face_dataset import FaceShardDataset
from fr.data.images import encode_image
from fr.data.shards import write_shards
from ray_jobs.data import read_face_shards


def _digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def test_ray_data_reader_yields_same_samples_as_torch_dataset(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    recs = [{"image": encode_image(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), "jpg"),
             "label": i % 5, "identity": f"id{i % 5}", "landmarks": np.zeros(10, np.float32), "source": "real"}
            for i in range(23)]
    write_shards(tmp_path, recs, rows_per_shard=7)
    torch_ds = FaceShardDataset(tmp_path)
    expected = sorted((int(y), _digest(x.numpy())) for x, y in (torch_ds[i] for i in range(len(torch_ds))))
    got = []
    for batch in read_face_shards(tmp_path, batch_size=4).iter_batches(batch_size=5, batch_format="numpy"):
        assert batch["image"].shape[1:] == (3, 112, 112) and batch["image"].dtype == np.float32
        got.extend((int(y), _digest(x)) for x, y in zip(batch["image"], batch["label"]))
    assert sorted(got) == expected
