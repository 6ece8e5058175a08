"""Encoding and decoding of face images (RGB uint8 arrays <-> JPEG/PNG bytes) with OpenCV."""
from __future__ import annotations

import cv2
import numpy as np

_FORMATS = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png"}


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as JPEG or PNG bytes (deterministic for equal input)."""
    if fmt not in _FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(_FORMATS)}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if _FORMATS[fmt] == ".jpg" else []
    ok, buf = cv2.imencode(_FORMATS[fmt], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {rgb.shape} as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes into an RGB uint8 (H, W, 3) array; ValueError if undecodable."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ValueError("image data is empty or not bytes")
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError(f"undecodable image ({len(data)} bytes)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def resize_faces(rgb_batch: np.ndarray, size: int) -> np.ndarray:
    """Uint8 RGB faces (B, H, W, 3) -> (B, size, size, 3): area averaging down, bicubic up, as is if equal."""
    arr = np.asarray(rgb_batch)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"expected square RGB faces of shape (B, S, S, 3), got {arr.shape}")
    if size < 1:
        raise ValueError(f"resize_faces: size must be >= 1, got {size}")
    if arr.shape[1] == size:
        return arr
    interp = cv2.INTER_AREA if size < arr.shape[1] else cv2.INTER_CUBIC
    out = np.empty((arr.shape[0], size, size, 3), np.uint8)
    for i, img in enumerate(arr):
        out[i] = cv2.resize(img, (size, size), interpolation=interp)
    return out


def to_model_input(rgb_batch: np.ndarray) -> "torch.Tensor":
    """Uint8 RGB faces (B, H, W, 3) -> float tensor (B, 3, H, W) normalised as (x - 127.5) / 128.

    This is the input convention of every FR backbone here (insightface's IResNet family).
    """
    import torch

    arr = np.asarray(rgb_batch)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB faces of shape (B, H, W, 3), got {arr.shape}")
    t = torch.from_numpy(np.array(arr, order="C", copy=True)).permute(0, 3, 1, 2).float()
    return (t - 127.5) / 128.0
