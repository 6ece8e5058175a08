"""Verification .bin loading with a restricted unpickler, and writing."""
from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest

from fr.data.binfile import BinFileError, UnsafePickleError, load_bin, write_bin


def random_images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    # Encoded-image-like bytes with non-ASCII and NUL bytes at the ends.
    return [b"\xff\xd8" + rng.integers(0, 256, size=int(rng.integers(1, 30)), dtype=np.uint8).tobytes() + b"\0" for _ in range(n)]


def test_round_trip(tmp_path):
    images, issame = random_images(6), [True, False, True]
    write_bin(tmp_path / "a.bin", images, issame)
    got_images, got_issame = load_bin(tmp_path / "a.bin")
    assert got_images == images
    assert got_issame.dtype == bool and got_issame.tolist() == issame
    # Plain pickle sees insightface's layout: (list of bytes, list of bools).
    with open(tmp_path / "a.bin", "rb") as f:
        assert pickle.load(f) == (images, issame)
    with pytest.raises(FileExistsError):
        write_bin(tmp_path / "a.bin", images, issame)
    write_bin(tmp_path / "a.bin", images[:2], [False], overwrite=True)
    assert load_bin(tmp_path / "a.bin")[0] == images[:2]


class _SideEffect:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
@pytest.mark.parametrize("where", ["bins", "issame"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        evil, refused = _SideEffect(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    else:
        evil, refused = _SideEffect(builtins.eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"
    payload = ([b"a", evil], [True]) if where == "bins" else ([b"a", b"b"], [evil])
    blob = pickle.dumps(payload, protocol=4)
    # The payload is live: an ordinary unpickle creates the marker.
    pickle.loads(blob)
    assert marker.exists()
    marker.unlink()
    (tmp_path / "evil.bin").write_bytes(blob)
    with pytest.raises(UnsafePickleError) as err:
        load_bin(tmp_path / "evil.bin")
    assert refused in str(err.value) and str(tmp_path / "evil.bin") in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_and_scalars_load(tmp_path, protocol):
    images = random_images(4, seed=1)
    bins = [np.frombuffer(im, dtype=np.uint8) for im in images]
    issame = [np.bool_(True), np.bool_(False)]
    (tmp_path / "np.bin").write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    got_images, got_issame = load_bin(tmp_path / "np.bin")
    assert got_images == images and got_issame.tolist() == [True, False]
    # issame as an ndarray, bytes from Python 3 at protocol 2 (pickled via _codecs.encode).
    (tmp_path / "np2.bin").write_bytes(pickle.dumps((images, np.array([0, 1], dtype=np.uint8)), protocol=protocol))
    got_images, got_issame = load_bin(tmp_path / "np2.bin")
    assert got_images == images and got_issame.tolist() == [False, True]


def test_numpy_1x_module_names_load(tmp_path):
    # numpy 1.x writes numpy.core.* where numpy 2 writes numpy._core.* (GLOBAL is plain text at protocol 2).
    images = random_images(2, seed=2)
    blob = pickle.dumps(([np.frombuffer(im, dtype=np.uint8) for im in images], [np.bool_(True)]), protocol=2)
    assert b"numpy._core." in blob
    (tmp_path / "np1.bin").write_bytes(blob.replace(b"numpy._core.", b"numpy.core."))
    got_images, got_issame = load_bin(tmp_path / "np1.bin")
    assert got_images == images and got_issame.tolist() == [True]


def test_python2_string_pickle_loads_as_bytes(tmp_path):
    # Hand-assembled protocol-2 pickle as Python 2 writes ([str, str], [True]) with non-ASCII str.
    blob = b"\x80\x02(](U\x02\xff\xd8U\x03\xff\xd9\x00e](\x88et."
    assert pickle.loads(blob, encoding="bytes") == ([b"\xff\xd8", b"\xff\xd9\x00"], [True])
    (tmp_path / "py2.bin").write_bytes(blob)
    images, issame = load_bin(tmp_path / "py2.bin")
    assert images == [b"\xff\xd8", b"\xff\xd9\x00"] and issame.tolist() == [True]


def test_malformed_files(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps((random_images(3), [True]), protocol=4))
    with pytest.raises(BinFileError, match="3 images for 1 pairs"):
        load_bin(path)
    with pytest.raises(BinFileError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "w.bin", random_images(3), [True])
    assert not (tmp_path / "w.bin").exists()
    path.write_bytes(pickle.dumps(([b"a", 3], [True]), protocol=4))
    with pytest.raises(BinFileError, match="image 1 is int"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], ["yes"]), protocol=4))
    with pytest.raises(BinFileError, match="issame"):
        load_bin(path)
    path.write_bytes(pickle.dumps({"bins": []}, protocol=4))
    with pytest.raises(BinFileError, match="pair"):
        load_bin(path)
    path.write_bytes(pickle.dumps((random_images(2), [True]), protocol=4)[:-5])
    with pytest.raises(BinFileError, match=f"{path}: not a readable pickle"):
        load_bin(path)
