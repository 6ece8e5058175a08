"""Ingest of image folders and insightface RecordIO into shard records, with skip counting."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fr.data.alignment import ARCFACE_TEMPLATE
from fr.data.images import decode_image, encode_image
from fr.data.ingest import (
    IngestStats,
    list_image_folder,
    list_recordio_keys,
    load_landmarks,
    records_from_image_files,
    records_from_image_folder,
    records_from_recordio,
)
from fr.data.recordio import RecordIORecord, write_recordio


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [128 + 90 * np.sin(x / 9 + c) * np.cos(y / 11 - c) for c in range(3)]
    return np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path):
    """alice: 2 png; bob: jpg + corrupt + wrong size; carol: bmp + a text file; dave: no images."""
    root = tmp_path / "faces"
    files = {
        "alice/a0.png": encode_image(noise(112, 112, 0), "png"),
        "alice/sub/a1.PNG": encode_image(noise(112, 112, 1), "png"),
        "bob/b0.jpg": encode_image(noise(112, 112, 2), "jpg"),
        "bob/corrupt.jpg": b"\xff\xd8\xff not really a jpeg",
        "bob/wrong.png": encode_image(noise(90, 100, 3), "png"),
        "carol/c0.bmp": cv2.imencode(".bmp", noise(112, 112, 4)[:, :, ::-1])[1].tobytes(),
        "carol/notes.txt": b"not an image",
        "dave/readme.md": b"no images here",
        "stray.jpg": encode_image(noise(112, 112, 5), "jpg"),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def test_image_folder_counts_and_records(folder):
    root, files = folder
    stats = IngestStats()
    records = list(records_from_image_folder(root, stats, fmt="png"))
    assert (stats.ingested, stats.skipped_corrupt, stats.skipped_missing_landmarks, stats.skipped_unaligned) == (4, 1, 1, 0)
    assert [r["identity"] for r in records] == ["alice", "alice", "bob", "carol"]
    assert [r["label"] for r in records] == [0, 0, 1, 2]  # contiguous, sorted folder order
    assert sorted({r["label"] for r in records}) == list(range(3))
    # JPEG/PNG sources are kept byte for byte; the BMP is re-encoded as PNG, losslessly.
    assert [r["image"] for r in records[:3]] == [files["alice/a0.png"], files["alice/sub/a1.PNG"], files["bob/b0.jpg"]]
    assert records[3]["image"].startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(records[3]["image"]), noise(112, 112, 4))
    for r in records:
        assert r["source"] == "real" and r["landmarks"].dtype == np.float32
        np.testing.assert_array_equal(r["landmarks"], ARCFACE_TEMPLATE.reshape(10))
    assert any("bob/corrupt.jpg: corrupt" in e for e in stats.examples)
    assert any("bob/wrong.png: missing_landmarks" in e and "100x90" in e for e in stats.examples)


def test_split_listing_matches_whole_folder(folder):
    root, _ = folder
    identities, files = list_image_folder(root)
    assert identities == ["alice", "bob", "carol"]
    assert files[0] == ("alice/a0.png", 0) and len(files) == 6
    whole = IngestStats()
    expected = list(records_from_image_folder(root, whole))
    parts = [IngestStats(), IngestStats()]
    got = [r for i, part in enumerate(parts) for r in records_from_image_files(root, files[i::2], part)]
    merged = parts[0].merge(parts[1])
    assert merged.as_dict() | {"examples": []} == whole.as_dict() | {"examples": []}
    assert sorted(len(r["image"]) for r in got) == sorted(len(r["image"]) for r in expected)


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list(records_from_image_folder(tmp_path / "nope", IngestStats()))
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(ValueError, match="no identity sub-folders with images"):
        list_image_folder(tmp_path / "empty")


def test_alignment_with_landmarks_file(tmp_path):
    root = tmp_path / "faces"
    (root / "eve").mkdir(parents=True)
    face = smooth(112, 112)
    # The aligned crop, upscaled 2x and pasted at (30, 20) in a larger canvas.
    canvas = np.zeros((300, 320, 3), np.uint8)
    canvas[20:244, 30:254] = cv2.resize(face, (224, 224), interpolation=cv2.INTER_LINEAR)
    src_points = (ARCFACE_TEMPLATE * 2 + 0.5) + np.array([30, 20], np.float32)  # pixel-centre convention
    for name in ("big.png", "flat.png", "nolm.png"):
        (root / "eve" / name).write_bytes(encode_image(canvas, "png"))
    landmarks = {"eve/big.png": src_points.reshape(10).tolist(), "./eve/flat.png": [50.0, 60.0] * 5}
    (tmp_path / "lm.json").write_text(json.dumps(landmarks))
    stats = IngestStats()
    records = list(records_from_image_folder(root, stats, landmarks_file=tmp_path / "lm.json", fmt="png"))
    assert (stats.ingested, stats.skipped_unaligned, stats.skipped_missing_landmarks) == (1, 1, 1)
    (rec,) = records
    aligned = decode_image(rec["image"])
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned.astype(int) - face.astype(int))[8:-8, 8:-8].mean() < 0.5
    np.testing.assert_allclose(rec["landmarks"].reshape(5, 2), ARCFACE_TEMPLATE, atol=1e-3)
    (tmp_path / "bad.json").write_text(json.dumps({"eve/big.png": [1.0] * 9}))
    with pytest.raises(ValueError, match="'eve/big.png' is not 10 numbers"):
        load_landmarks(tmp_path / "bad.json")


def rec_record(key: int, label, image: bytes) -> RecordIORecord:
    if isinstance(label, tuple):
        return RecordIORecord(key, len(label), label, key, 0, image)
    return RecordIORecord(key, 0, label, key, 0, image)


def test_recordio_ingest(tmp_path):
    good = {
        1: encode_image(noise(112, 112, 10), "jpg"),
        2: encode_image(noise(112, 112, 11), "png"),
        6: encode_image(noise(112, 112, 12), "jpg"),
    }
    records = [
        rec_record(0, (7.0, 9.0), b""),  # header: images are keys 1..6
        rec_record(1, 0.0, good[1]),
        rec_record(2, 0.0, good[2]),
        rec_record(3, 1.0, b"garbage bytes"),
        rec_record(4, 1.0, encode_image(noise(96, 96, 13), "jpg")),
        rec_record(5, 1.5, encode_image(noise(112, 112, 14), "jpg")),
        rec_record(6, (2.0, 9.0), good[6]),
        rec_record(7, (1.0, 3.0), b""),  # identity index records
        rec_record(8, (3.0, 7.0), b""),
    ]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_recordio(rec, idx, records)
    assert list_recordio_keys(rec, idx) == [1, 2, 3, 4, 5, 6]
    for source in (idx, None):
        stats = IngestStats()
        out = list(records_from_recordio(rec, source, stats))
        assert (stats.ingested, stats.skipped_corrupt, stats.skipped_unaligned, stats.skipped_missing_landmarks) == (3, 2, 1, 0)
        assert [(r["label"], r["identity"]) for r in out] == [(0, "id_0"), (0, "id_0"), (2, "id_2")]
        assert [r["image"] for r in out] == [good[1], good[2], good[6]]
        assert stats.examples[0].startswith(f"{rec}#3: corrupt")
    stats = IngestStats()
    assert [r["image"] for r in records_from_recordio(rec, idx, stats, keys=[6, 3])] == [good[6]]
    assert (stats.ingested, stats.skipped_corrupt) == (1, 1)


def test_stats_merge_and_limits():
    a, b = IngestStats(), IngestStats()
    for i in range(15):
        a.skip("corrupt", f"a{i}", "x")
        b.skip("unaligned", f"b{i}", "y")
    b.ingested = 4
    a.merge(b)
    assert (a.ingested, a.skipped_corrupt, a.skipped_unaligned, a.skipped) == (4, 15, 15, 30)
    assert len(a.examples) == 20 and a.examples[15] == "b0: unaligned: y"
    assert set(a.as_dict()) == {"ingested", "skipped_corrupt", "skipped_unaligned", "skipped_missing_landmarks", "examples"}
    with pytest.raises(ValueError, match="unknown skip reason"):
        a.skip("blurry", "x", "y")
