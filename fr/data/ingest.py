"""Turn real face sources (an image folder, insightface RecordIO) into shard records, counting what is skipped.

A shard record is ``{"image": bytes, "label": int, "identity": str, "landmarks": float32 (10,),
"source": "real"}`` (see DESIGN.md). Bad images never stop an ingest: they are skipped and counted
in an :class:`IngestStats`. Source bytes that are already JPEG/PNG and need no warp are kept as they
are (no re-encoding loss); everything else is encoded with ``fmt``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from fr.data.alignment import DegenerateLandmarksError, align_face, template_for_size
from fr.data.images import decode_image, encode_image
from fr.data.recordio import RecordIORecord, iter_recordio, read_header, read_index

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_EXAMPLES = 20
# Skip reasons; each has an IngestStats counter named skipped_<reason>.
CORRUPT, UNALIGNED, MISSING_LANDMARKS = "corrupt", "unaligned", "missing_landmarks"
_KEEP_AS_IS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG signatures


@dataclass
class IngestStats:
    """Counts of ingested and skipped images, and the first few problems (``"where: reason: detail"``)."""

    ingested: int = 0
    skipped_corrupt: int = 0
    skipped_unaligned: int = 0
    skipped_missing_landmarks: int = 0
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str, detail: str) -> None:
        """Count one skipped image under ``reason`` (corrupt / unaligned / missing_landmarks)."""
        counter = f"skipped_{reason}"
        if not hasattr(self, counter):
            raise ValueError(f"unknown skip reason {reason!r}; expected {CORRUPT}, {UNALIGNED} or {MISSING_LANDMARKS}")
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}: {detail}")

    @property
    def skipped(self) -> int:
        """All skipped images."""
        return self.skipped_corrupt + self.skipped_unaligned + self.skipped_missing_landmarks

    def merge(self, other: IngestStats) -> IngestStats:
        """Add ``other``'s counts (and examples, up to the cap) into this one; returns self."""
        for f in fields(self):
            if f.name != "examples":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.examples.extend(other.examples[: MAX_EXAMPLES - len(self.examples)])
        return self

    def as_dict(self) -> dict:
        """Plain dict of the counters and examples (JSON/MLflow friendly)."""
        return asdict(self)


def _face_record(
    data: bytes,
    where: str,
    label: int,
    identity: str,
    stats: IngestStats,
    image_size: int,
    fmt: str,
    landmarks: np.ndarray | None = None,
    wrong_size: str = MISSING_LANDMARKS,
) -> dict | None:
    """Decode, align (with ``landmarks``) or accept an already aligned crop; None (counted) when skipped.

    Without landmarks only an ``image_size`` square is accepted, with the ArcFace template as its
    landmarks; other sizes are counted under ``wrong_size``.
    """
    try:
        rgb = decode_image(data)
    except ValueError as exc:
        stats.skip(CORRUPT, where, str(exc))
        return None
    if landmarks is not None:
        try:
            face, points = align_face(rgb, landmarks, size=image_size)
        except DegenerateLandmarksError as exc:
            stats.skip(UNALIGNED, where, str(exc))
            return None
        image = encode_image(face, fmt)
    elif rgb.shape[:2] == (image_size, image_size):
        points = template_for_size(image_size)
        image = bytes(data) if bytes(data[:8]).startswith(_KEEP_AS_IS) else encode_image(rgb, fmt)
    else:
        h, w = rgb.shape[:2]
        stats.skip(wrong_size, where, f"{w}x{h} image is not an aligned {image_size}x{image_size} crop")
        return None
    stats.ingested += 1
    return {
        "image": image,
        "label": int(label),
        "identity": identity,
        "landmarks": np.asarray(points, dtype=np.float32).reshape(10),
        "source": "real",
    }


# ---------------------------------------------------------------- image folders


def list_image_folder(root: PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """List an identity-per-folder tree: (sorted identities, sorted [(relative posix path, label)]).

    Identities are the sub-folders of ``root`` that hold at least one image (searched recursively,
    extensions jpg/jpeg/png/bmp/webp, any case; hidden entries ignored); label = index in sorted order.
    ValueError if ``root`` is missing, not a folder, or has no images.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"image folder {os.fspath(root)!r} does not exist or is not a directory")
    identities: list[str] = []
    files: list[tuple[str, int]] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            p.relative_to(base).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if images:
            files.extend((rel, len(identities)) for rel in images)
            identities.append(folder.name)
    if not files:
        raise ValueError(
            f"image folder {os.fspath(root)!r} has no identity sub-folders with images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return identities, files


def load_landmarks(path: PathLike) -> dict[str, np.ndarray]:
    """Read a JSON {relative image path: 10 numbers (x0, y0, ..., x4, y4)} into float32 (5, 2) arrays.

    ValueError naming the file (and key) when it is not such a mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"landmarks file {os.fspath(path)}: invalid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"landmarks file {os.fspath(path)}: expected a JSON object, got {type(raw).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        try:
            points = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            points = None
        if points is None or points.size != 10:
            raise ValueError(f"landmarks file {os.fspath(path)}: entry {key!r} is not 10 numbers: {value!r}")
        out[Path(key).as_posix().removeprefix("./")] = points.reshape(5, 2)
    return out


def records_from_image_files(
    root: PathLike,
    files: Iterable[tuple[str, int]],
    stats: IngestStats,
    image_size: int = 112,
    landmarks: Mapping[str, np.ndarray] | None = None,
    fmt: str = "jpg",
) -> Iterator[dict]:
    """Shard records for ``files`` from :func:`list_image_folder` (any subset, e.g. one Ray task's share).

    identity = the file's top folder. With ``landmarks`` (from :func:`load_landmarks`) each image is
    aligned; a file without an entry is counted as missing landmarks, degenerate ones as unaligned.
    """
    base = Path(root)
    for rel, label in files:
        where = (base / rel).as_posix()
        try:
            data = (base / rel).read_bytes()
        except OSError as exc:
            stats.skip(CORRUPT, where, f"unreadable ({exc.strerror or exc})")
            continue
        points = None
        if landmarks is not None:
            points = landmarks.get(rel)
            if points is None:
                stats.skip(MISSING_LANDMARKS, where, "no entry in the landmarks file")
                continue
        record = _face_record(data, where, label, rel.split("/", 1)[0], stats, image_size, fmt, landmarks=points)
        if record is not None:
            yield record


def records_from_image_folder(
    root: PathLike,
    stats: IngestStats,
    image_size: int = 112,
    landmarks_file: PathLike | None = None,
    fmt: str = "jpg",
) -> Iterator[dict]:
    """Shard records for a whole identity-per-folder tree (see :func:`records_from_image_files`).

    Labels follow the sorted identity folders. A folder whose every image is skipped leaves its
    label unused, so callers that need contiguous labels must relabel after the ingest.
    """
    _, files = list_image_folder(root)
    landmarks = None if landmarks_file is None else load_landmarks(landmarks_file)
    yield from records_from_image_files(root, files, stats, image_size, landmarks, fmt)


# ---------------------------------------------------------------- insightface RecordIO


def _image_key_end(header: RecordIORecord | None) -> int | None:
    """insightface headers give (first key past the images, ...): image keys are 1 .. that - 1."""
    return None if header is None else int(header.labels[0])


def _is_image_key(key: int, end: int | None) -> bool:
    return end is None or 1 <= key < end


def list_recordio_keys(rec_path: PathLike, idx_path: PathLike) -> list[int]:
    """Sorted keys of the image records (no header, no identity index records), for splitting work."""
    end = _image_key_end(read_header(rec_path, idx_path))
    return [key for key in sorted(read_index(idx_path)) if _is_image_key(key, end)]


def records_from_recordio(
    rec_path: PathLike,
    idx_path: PathLike | None,
    stats: IngestStats,
    image_size: int = 112,
    fmt: str = "jpg",
    keys: Iterable[int] | None = None,
) -> Iterator[dict]:
    """Shard records from an insightface ``.rec`` (pre-aligned crops); ``keys`` selects records (needs idx).

    label = int(first label), identity = ``id_<label>``. The header record and the identity index
    records after the images are skipped silently; an undecodable image or a label that is not a
    non-negative integer is counted as corrupt, a crop that is not image_size square as unaligned.
    A structurally broken file raises :class:`fr.data.recordio.RecordIOError`.
    """
    end = _image_key_end(read_header(rec_path, idx_path))
    for rec in iter_recordio(rec_path, idx_path, keys=keys):
        if not _is_image_key(rec.key, end):
            continue
        where = f"{os.fspath(rec_path)}#{rec.key}"
        label = rec.labels[0]
        if not math.isfinite(label) or label < 0 or label != int(label):
            stats.skip(CORRUPT, where, f"label {label} is not a non-negative integer")
            continue
        record = _face_record(rec.image, where, int(label), f"id_{int(label)}", stats, image_size, fmt, wrong_size=UNALIGNED)
        if record is not None:
            yield record
