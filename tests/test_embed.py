"""Evaluator embeddings, the embedding cache, the report helpers, and leakage on real toy images."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evaluation.embed import (Embeddings, EvaluatorMismatchError, check_evaluator_fits, decode_faces, embed_faces,
                              embed_shards, load_evaluator, load_faces, read_columns, read_shard_faces)
from evaluation.embedding_cache import EmbeddingCache, evaluator_key, load_or_compute
from evaluation.leakage import leakage_report
from evaluation.report import (choose_prototypes, flat_metrics, format_summary_table, json_safe, prototype_rows,
                               sample_pairs)
from fr.backbones import build_backbone, save_backbone
from fr.crfiqa import QualityHead
from fr.data.images import decode_image, encode_image
from fr.data.shards import build_dataset_info, list_shards, write_dataset_json, write_shards
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records

EMB = 16


def toy_dataset(directory, ids, split="train", source="real", images=3, rows_per_shard=20, transform=None):
    """Toy shards + dataset.json; labels renumbered 0..K-1 in the order of ``ids``; ``images``: per class
    (an int, or one count per id)."""
    counts = [images] * len(ids) if isinstance(images, int) else list(images)
    cfg = ToyFaceConfig(num_identities=max(ids) + 1, min_images=max(counts), max_images=max(counts), seed=0)
    recs = []
    for label, (i, n) in enumerate(zip(ids, counts)):
        for r in list(iter_toy_records(cfg, [i], split))[:n]:
            r.update(label=label, source=source)
            if transform is not None:
                r["image"] = transform(r["image"])
            recs.append(r)
    write_shards(directory, recs, rows_per_shard)
    write_dataset_json(directory, build_dataset_info(directory, 112, {"test": split}))
    return Path(directory)


def tiny_evaluator(directory, input_size=32, auto_resize=True, quality=True, seed=0, embedding_size=EMB):
    """A random tiny IResNet (+ quality head) saved as <directory>/backbone.* (+ quality.safetensors)."""
    torch.manual_seed(seed)
    net = build_backbone("iresnet_tiny", embedding_size, input_size=input_size, auto_resize=auto_resize)
    prefix = save_backbone(net, Path(directory) / "backbone")
    if quality:
        head = QualityHead(embedding_size)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(Path(directory) / "quality.safetensors"))
    return prefix


def noisy_copy(seed=0, amplitude=3):
    """Image transform: decode, add uniform noise of +-amplitude grey levels, re-encode as JPEG."""
    rng = np.random.default_rng(seed)

    def transform(data):
        img = decode_image(data).astype(np.int16) + rng.integers(-amplitude, amplitude + 1, (112, 112, 3))
        return encode_image(np.clip(img, 0, 255).astype(np.uint8), "jpg", 95)

    return transform


def test_embeddings_match_a_direct_forward_pass(tmp_path):
    data = toy_dataset(tmp_path / "ds", [0, 1, 2], rows_per_shard=4)
    prefix = tiny_evaluator(tmp_path / "ev")
    ev = load_evaluator(prefix, tmp_path / "ev" / "quality.safetensors", flip=True)
    out = embed_shards(ev, list_shards(data), 112, batch_size=3)
    rows = Embeddings.concat([out[p] for p in list_shards(data)])
    faces = np.concatenate([read_shard_faces(p, 112)[0] for p in list_shards(data)])
    x = (torch.from_numpy(faces).permute(0, 3, 1, 2).float() - 127.5) / 128
    with torch.no_grad():
        raw = ev.backbone(x)
        both = raw + ev.backbone(x.flip(3))
        q = ev.quality(raw)
    np.testing.assert_allclose(rows.embeddings, (both / both.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    np.testing.assert_allclose(rows.fiqa, q.numpy(), atol=1e-5)
    labels, synthetic = read_columns(data)
    assert rows.labels.tolist() == labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and not synthetic.any()
    # no flip, no quality head: plain normalised embeddings, FIQA None
    plain = load_evaluator(prefix, None, flip=False)
    emb, fiqa = embed_faces(plain, faces, batch_size=4)
    assert fiqa is None
    np.testing.assert_allclose(emb, (raw / raw.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    # load_faces picks rows across shards in the requested order
    picked = load_faces(data, [7, 0, 4], 112)
    assert all(np.array_equal(a, faces[i]) for a, i in zip(picked, [7, 0, 4]))


def test_evaluator_mismatch_errors(tmp_path):
    fixed = load_evaluator(tiny_evaluator(tmp_path / "a", input_size=32, auto_resize=False, quality=False))
    with pytest.raises(EvaluatorMismatchError, match="112x112 images do not fit.*32x32"):
        check_evaluator_fits(fixed, 112, where="synthetic dataset x")
    check_evaluator_fits(fixed, 32)
    resizing = load_evaluator(tiny_evaluator(tmp_path / "b"))
    check_evaluator_fits(resizing, 112)
    with pytest.raises(EvaluatorMismatchError, match="expects 512-d embeddings.*gives 16-d"):
        check_evaluator_fits(resizing, 112, embedding_size=512)
    wrong = QualityHead(EMB + 1)
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(tmp_path / "q.safetensors"))
    with pytest.raises(EvaluatorMismatchError, match="does not fit the 16-d embedder"):
        load_evaluator(tmp_path / "b" / "backbone", tmp_path / "q.safetensors")


def test_decode_faces_names_bad_rows():
    good = encode_image(np.zeros((112, 112, 3), np.uint8), "png")
    small = encode_image(np.zeros((64, 64, 3), np.uint8), "png")
    assert decode_faces([good], 112).shape == (1, 112, 112, 3)
    with pytest.raises(ValueError, match="shard x, row 1: image is 64x64.*image_size is 112"):
        decode_faces([good, small], 112, "shard x")
    with pytest.raises(ValueError, match="row 0: undecodable"):
        decode_faces([b"not an image"], 112)


def _fake_compute(calls):
    """A compute function that records the shards it was asked for (embedding = label one-hot + row)."""
    def compute(paths):
        calls.append([p.name for p in paths])
        out = {}
        for p in paths:
            labels = read_shard_faces(p, 112)[1]
            emb = np.stack([np.eye(4)[l] + 0.1 * i for i, l in enumerate(labels)]).astype(np.float32)
            out[p] = Embeddings(emb, labels, np.arange(len(labels), dtype=np.float32))
        return out
    return compute


def test_cache_reused_and_invalidated(tmp_path):
    data = toy_dataset(tmp_path / "ds", [0, 1, 2], rows_per_shard=4)
    shards = list_shards(data)
    calls = []
    first, stats = load_or_compute([data], "k1", _fake_compute(calls))
    assert calls == [[p.name for p in shards]] and stats.computed[str(data)] == 3
    cache = EmbeddingCache(data, "k1")
    assert cache.directory == Path(str(data) + ".embeddings") / "k1"
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache.directory.iterdir()}
    again, stats = load_or_compute([data], "k1", _fake_compute(calls))
    assert len(calls) == 1 and stats.cached[str(data)] == 3 and stats.computed[str(data)] == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.directory.iterdir()} == mtimes
    np.testing.assert_array_equal(again[data].embeddings, first[data].embeddings)
    np.testing.assert_array_equal(again[data].fiqa, first[data].fiqa)
    # a rewritten shard is embedded again, the others are read back
    os.utime(shards[1], ns=(shards[1].stat().st_atime_ns, shards[1].stat().st_mtime_ns + 10**9))
    load_or_compute([data], "k1", _fake_compute(calls))
    assert calls[-1] == [shards[1].name]
    # another evaluator key, or the cache off: everything is computed, nothing new is written when off
    load_or_compute([data], "k2", _fake_compute(calls))
    assert calls[-1] == [p.name for p in shards]
    load_or_compute([data], "k3", _fake_compute(calls), enabled=False)
    assert not (Path(str(data) + ".embeddings") / "k3").exists()


def test_evaluator_key_tracks_weights_and_flip(tmp_path):
    prefix = tiny_evaluator(tmp_path / "a", quality=False)
    k = evaluator_key(prefix, None, True)
    assert k == evaluator_key(str(prefix) + ".safetensors", None, True)
    assert k != evaluator_key(prefix, None, False)
    tiny_evaluator(tmp_path / "a", quality=False, seed=1)  # same files, other weights
    assert k != evaluator_key(prefix, None, True)


def test_sample_pairs_brute_force():
    labels = np.array([0, 0, 0, 1, 2, 2, 3])
    i, j, same = sample_pairs(labels, 200, seed=1)
    assert same.sum() == 200 and (~same).sum() == 200
    assert np.all(labels[i[same]] == labels[j[same]]) and np.all(i[same] != j[same])
    assert np.all(labels[i[~same]] != labels[j[~same]])
    assert labels[i[same]].tolist().count(1) == 0  # a one-image class has no genuine pair
    # genuine partners are spread over the whole class (class 0: all 6 ordered pairs appear)
    pairs0 = {(a, b) for a, b in zip(i[same], j[same]) if labels[a] == 0}
    assert pairs0 == {(a, b) for a in range(3) for b in range(3) if a != b}
    _, _, only = sample_pairs(np.zeros(4, np.int64), 10)
    assert only.all() and only.size == 10


def test_prototype_rows_and_choice():
    rows = prototype_rows(["alice", "virtual_1", "bob", "virtual_9", "carol"], ["bob", "alice"], 2, 3)
    assert rows.tolist() == [1, 3, 0, -1, -1]
    assert prototype_rows(["x", "y"], None, 2, 3, proto_index=[4, 0]).tolist() == [4, 0]
    with pytest.raises(ValueError, match="proto_index"):
        prototype_rows(["x"], None, 2, 3, proto_index=[5])
    chosen = choose_prototypes({"ref": np.array([0, 1, 2]), "syn": np.array([5, -1, 3])}, 3, 4, 2)
    assert chosen == [(0, "ref", 0), (1, "ref", 1), (3, "syn", 2), (5, "syn", 0)]
    chosen = choose_prototypes({"ref": np.array([0])}, 3, 4, 2)
    assert chosen == [(0, "ref", 0), (3, None, None), (4, None, None)]


def test_leakage_on_toy_images_copy_fails_unrelated_passes(tmp_path):
    """Embedding level, real evaluator forward passes: a re-encoded noisy copy of the reference leaks;
    other toy identities stay at the level real identities keep from each other."""
    ref = toy_dataset(tmp_path / "ref", list(range(12)))
    copy = toy_dataset(tmp_path / "copy", list(range(12)), source="synthetic", transform=noisy_copy())
    other = toy_dataset(tmp_path / "other", list(range(12)), split="verify", source="synthetic")
    ev = load_evaluator(tiny_evaluator(tmp_path / "ev", quality=False, embedding_size=64))

    def rows(d):
        return Embeddings.concat(list(embed_shards(ev, list_shards(d), 112).values()))

    r, c, o = rows(ref), rows(copy), rows(other)
    leak_copy = leakage_report(c.embeddings, c.labels, r.embeddings, r.labels, "image")
    leak_other = leakage_report(o.embeddings, o.labels, r.embeddings, r.labels, "image")
    assert leak_copy.leak_fraction == 1.0 and not leak_copy.passes(0.5)
    assert leak_other.leak_fraction <= 0.25 and leak_other.passes(0.25)
    assert leak_copy.identity_max.min() > leak_other.identity_max.max()


def test_summary_table_and_metrics():
    from evaluation.properties import compute_properties
    from evaluation.report import dataset_summary, privacy_verdict

    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    props = compute_properties(emb, labels, np.array([0.1, 0.3, 0.2, 0.2, 0.5]))
    rep = leakage_report(emb[:2], np.array([7, 7]), emb, labels, "image", threshold_quantile=1.0)
    verdict = privacy_verdict(rep, 0.0, evaluator="ev")
    assert verdict["passed"] is False and verdict["leak_fraction"] == 1.0 and verdict["evaluator"] == "ev"
    s = dataset_summary(props, props, 5, ["a", "b", "c"], verdict)
    assert s["num_singleton_classes"] == 1 and s["singleton_classes"] == ["c"]
    assert s["normalised"]["consistency"] == pytest.approx(1.0)
    table = format_summary_table({"real": dataset_summary(props, props, 5), "syn": s}, "real")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["dataset", "images", "classes"]
    assert lines[2].split()[-1] == "reference" and lines[3].split()[-1] == "FAIL"
    assert f"{props.mean('consistency'):.3f} (1.00)" in lines[3]
    metrics = flat_metrics({"syn set": s}, {"ckpt": {"verify/lfw/accuracy": 0.9}})
    assert metrics["syn set/privacy/leak_fraction"] == 1.0 and metrics["ckpt/verify/lfw/accuracy"] == 0.9
    assert metrics["syn set/num_singleton_classes"] == 1.0
    assert all(math.isfinite(v) for v in metrics.values())


def test_real_identities_are_never_privacy_free():
    from evaluation.properties import compute_properties
    from evaluation.report import dataset_summary, privacy_verdict, shared_identities

    assert shared_identities(np.array([2, 0, 2]), ["a", "virtual_1", "c"], ["c", "a", "z"]) == ["a", "c"]
    assert shared_identities(np.array([1]), ["a", "virtual_1"], ["a"]) == []
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], np.float32)  # real level 0.8
    labels = np.array([0, 1, 2, 3])
    far = leakage_report(np.array([[0, -1]], np.float32), np.array([5]), emb, labels, "image")
    assert far.passes(0.0)  # the leakage figure alone would pass it
    clean = privacy_verdict(far, 0.0)
    assert clean["passed"] is True and clean["num_real_identities"] == 0
    realaug = privacy_verdict(far, 0.0, ["toy_train_000003"])
    assert realaug["passed"] is False and realaug["num_real_identities"] == 1
    assert realaug["leak_fraction"] == clean["leak_fraction"] and "real-ID augmentation" in realaug["reason"]
    props = compute_properties(emb, labels, np.array([0.1, 0.3, 0.2, 0.5]))
    table = format_summary_table({"aug": dataset_summary(props, props, 4, None, realaug)}, "real")
    assert table.splitlines()[2].endswith("FAIL (real ids)")
    assert json.loads(json.dumps(json_safe({"a": float("nan"), "b": np.int64(3), "c": np.arange(2)}))) == \
        {"a": None, "b": 3, "c": [0, 1]}
