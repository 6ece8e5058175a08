"""insightface verification ``.bin`` files: a pickle of ``(bins, issame_list)``, pairs ``(2i, 2i+1)``.

Unpickling runs code named by the file, so :func:`load_bin` uses a restricted unpickler that builds
only plain containers, bytes, numbers, bools and numpy arrays/scalars, and refuses every other
global with :class:`UnsafePickleError` before anything is called.
"""
from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PathLike = str | os.PathLike


class BinFileError(ValueError):
    """A ``.bin`` file that is not a well-formed ``(bins, issame_list)`` pickle."""


class UnsafePickleError(BinFileError):
    """The pickle names a global outside the allow-list (it would run code when loaded)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1, the only use Python 3 makes of it when pickling bytes."""
    if encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed (only latin1)")
    return codecs.encode(text, "latin1")


# What numpy itself writes when it pickles an array or scalar (taken from numpy's own reducers, so
# both numpy 1.x names `numpy.core.*` and 2.x names `numpy._core.*` map to the installed functions).
_reconstruct = np.array(0).__reduce__()[0]
_frombuffer = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]
_scalar = np.bool_(True).__reduce__()[0]

_ALLOWED: dict[tuple[str, str], Any] = {
    # ndarray.__reduce__ (pickle protocols 0-4): _reconstruct(ndarray, shape, dtype) + __setstate__.
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    # ndarray.__reduce_ex__(5) for contiguous arrays: _frombuffer(buffer, dtype, shape, order).
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    # numpy scalars (e.g. issame flags stored as np.bool_): scalar(dtype, raw bytes).
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    # The array class passed to _reconstruct, and dtype objects rebuilt from their descriptors.
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 pickles `bytes` at protocol <= 2 as _codecs.encode(latin-1 text, "latin1").
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals are limited to :data:`_ALLOWED`."""

    def __init__(self, file, source: str) -> None:
        # encoding="bytes": py2 `str` objects (the encoded images of insightface's files) load as bytes.
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load {module}.{name} (only numpy arrays, bytes and plain values are allowed)"
            ) from None


def _as_image_bytes(item: Any, index: int, source: str) -> bytes:
    if isinstance(item, (bytes, bytearray)):  # np.bytes_ is a bytes subclass
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    kind = f"{type(item).__name__}" + (f" {item.dtype} {item.shape}" if isinstance(item, np.ndarray) else "")
    raise BinFileError(f"{source}: image {index} is {kind}; expected encoded bytes or a 1-D uint8 array")


def _as_issame(issame: Any, source: str) -> np.ndarray:
    arr = np.asarray(issame)
    if arr.ndim != 1 or arr.dtype == object or not np.all((arr == 0) | (arr == 1)):
        raise BinFileError(f"{source}: issame must be a flat sequence of booleans, got {arr.dtype} {arr.shape}")
    return arr.astype(bool)


def _checked(bins: Any, issame: Any, source: str) -> tuple[list[bytes], np.ndarray]:
    """Normalise (bins, issame) into (list of bytes, bool array) and check 2 images per pair."""
    if not isinstance(bins, (list, tuple, np.ndarray)) or (isinstance(bins, np.ndarray) and bins.ndim != 1):
        raise BinFileError(f"{source}: bins must be a list of encoded images, got {type(bins).__name__}")
    images = [_as_image_bytes(item, i, source) for i, item in enumerate(bins)]
    flags = _as_issame(issame, source)
    if len(images) != 2 * len(flags):
        raise BinFileError(
            f"{source}: {len(images)} images for {len(flags)} pairs; expected exactly 2 images per pair ({2 * len(flags)})"
        )
    return images, flags


def load_bin(path: PathLike) -> tuple[list[bytes], np.ndarray]:
    """Load a verification ``.bin``: (2N encoded images as bytes, issame bool array of N pairs).

    Raises UnsafePickleError for any global outside the allow-list, BinFileError for a malformed file.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f, source).load()
        except BinFileError:
            raise
        except Exception as exc:  # truncated or garbled pickle streams raise many types
            raise BinFileError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise BinFileError(f"{source}: expected a pickled (bins, issame_list) pair, got {type(data).__name__}")
    return _checked(data[0], data[1], source)


def write_bin(path: PathLike, images: Sequence[bytes], issame: Sequence[bool], overwrite: bool = False) -> None:
    """Write a ``.bin`` as a protocol-4 pickle of (list of bytes, list of bool), readable by insightface."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    bins, flags = _checked(list(images), list(issame), f"write_bin({path})")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, [bool(v) for v in flags]), f, protocol=4)
    os.replace(tmp, path)
