"""Chunked cosine top-k search against a brute-force full-matrix reference."""
import numpy as np
import pytest
import torch

from evaluation import knn
from evaluation.knn import memory_bound_bytes, nearest_negative, topk_cosine


def brute_topk(q, keys, k, exclude_self=False, key_labels=None, query_labels=None):
    """Full float64 similarity matrix; ties -> smallest index (stable sort); missing -> (-inf, -1)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    sim = qn.astype(np.float64) @ kn.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    if key_labels is not None:
        sim[query_labels[:, None] == key_labels[None, :]] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(sim, order, axis=1)
    return vals, np.where(np.isfinite(vals), order, -1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(23, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)


@pytest.mark.parametrize("qc,kc", [(1, 1), (3, 7), (5, 16), (7, 13), (64, 1000)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(data, qc, kc, k):
    q, keys = data
    v, i = topk_cosine(q, keys, k, query_chunk=qc, key_chunk=kc)
    rv, ri = brute_topk(q, keys, k)
    assert v.shape == (23, k) and i.dtype == torch.int64
    np.testing.assert_allclose(v.numpy(), rv, atol=1e-5)
    np.testing.assert_array_equal(i.numpy(), ri)


@pytest.mark.parametrize("qc,kc", [(4, 6), (50, 9), (11, 50)])
def test_exclude_self_and_labels(data, qc, kc):
    _, keys = data
    labels = np.random.default_rng(1).integers(0, 5, size=50)
    v, i = topk_cosine(keys, keys, 3, query_chunk=qc, key_chunk=kc, exclude_self=True)
    rv, ri = brute_topk(keys, keys, 3, exclude_self=True)
    np.testing.assert_allclose(v.numpy(), rv, atol=1e-5)
    np.testing.assert_array_equal(i.numpy(), ri)
    v, i = topk_cosine(keys, keys, 4, query_chunk=qc, key_chunk=kc, key_labels=labels, exclude_label_of_query=labels)
    rv, ri = brute_topk(keys, keys, 4, key_labels=labels, query_labels=labels)
    np.testing.assert_allclose(v.numpy(), rv, atol=1e-5)
    np.testing.assert_array_equal(i.numpy(), ri)
    assert np.all(labels[i.numpy()] != labels[:, None])
    nv, ni = nearest_negative(keys, labels, keys, labels, query_chunk=qc, key_chunk=kc)
    np.testing.assert_array_equal(ni.numpy(), ri[:, 0])


def test_too_few_valid_keys_padded(data):
    q, keys = data
    key_labels = np.zeros(50, dtype=np.int64)
    key_labels[[7, 30]] = 1
    q_labels = np.zeros(23, dtype=np.int64)
    q_labels[0] = 1
    v, i = topk_cosine(q, keys, 3, key_chunk=8, key_labels=key_labels, exclude_label_of_query=q_labels)
    rv, ri = brute_topk(q, keys, 3, key_labels=key_labels, query_labels=q_labels)
    np.testing.assert_array_equal(i.numpy(), ri)
    assert np.all(np.isneginf(v.numpy()[1:, 2])) and np.all(i.numpy()[1:, 2] == -1)
    assert set(i.numpy()[1, :2]) == {7, 30}


@pytest.mark.parametrize("kc", [1, 2, 5, 6, 12])
def test_ties_resolved_to_smallest_index(kc):
    # exact ties: one-hot keys, duplicates of e0 at indices 1, 4, 5, 9 (within and across chunks)
    d = 4
    basis = np.eye(d, dtype=np.float32)
    key_axes = [1, 0, 2, 3, 0, 0, 1, 2, 3, 0, 1, 2]
    keys = basis[key_axes]
    queries = basis[[0, 1, 0]]
    v, i = topk_cosine(queries, keys, 3, query_chunk=2, key_chunk=kc)
    np.testing.assert_array_equal(i.numpy(), [[1, 4, 5], [0, 6, 10], [1, 4, 5]])
    np.testing.assert_array_equal(v.numpy(), np.ones((3, 3)))
    # k=6 on query e0: 4 ones, then zeros with smallest indices 0, 2
    v, i = topk_cosine(queries[:1], keys, 6, key_chunk=kc)
    np.testing.assert_array_equal(i.numpy(), [[1, 4, 5, 9, 0, 2]])
    # duplicates among the same set with self excluded
    v, i = topk_cosine(keys, keys, 2, key_chunk=kc, exclude_self=True)
    assert i[4].tolist() == [1, 5] and i[9].tolist() == [1, 4]


def test_memmap_input_and_float64(tmp_path, data):
    q, keys = data
    np.save(tmp_path / "keys.npy", keys)
    mm = np.load(tmp_path / "keys.npy", mmap_mode="r")
    v, i = topk_cosine(q, mm, 2, key_chunk=9, dtype=torch.float64)
    rv, ri = brute_topk(q, keys, 2)
    np.testing.assert_allclose(v.numpy(), rv, atol=1e-6)
    np.testing.assert_array_equal(i.numpy(), ri)


def test_blocks_stay_within_chunks(monkeypatch, data):
    q, keys = data
    shapes = []
    real = knn._similarity_block

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(knn, "_similarity_block", spy)
    topk_cosine(q, keys, 2, query_chunk=6, key_chunk=11)
    assert len(shapes) == 4 * 5
    assert max(s[0] for s in shapes) == 6 and max(s[1] for s in shapes) == 11
    assert memory_bound_bytes(6, 11, 2, 8) >= 6 * 11 * 4 + (6 + 11) * 8 * 4


def test_bad_inputs(data):
    q, keys = data
    with pytest.raises(ValueError, match="zero-norm"):
        bad = keys.copy()
        bad[12] = 0
        topk_cosine(q, bad, 1, key_chunk=5)
    with pytest.raises(ValueError, match="dimension"):
        topk_cosine(q, keys[:, :4], 1)
    with pytest.raises(ValueError, match="k must be"):
        topk_cosine(q, keys, 51)
    with pytest.raises(ValueError, match="exclude_self"):
        topk_cosine(q, keys, 1, exclude_self=True)
    with pytest.raises(ValueError, match="together"):
        topk_cosine(q, keys, 1, key_labels=np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        topk_cosine(q, keys, 1, key_labels=np.zeros(50), exclude_label_of_query=np.zeros(23))
    with pytest.raises(ValueError, match="shape"):
        topk_cosine(q, keys, 1, key_labels=np.zeros(49, dtype=int), exclude_label_of_query=np.zeros(23, dtype=int))
    with pytest.raises(ValueError, match=">= 1"):
        memory_bound_bytes(0, 1, 1, 1)
