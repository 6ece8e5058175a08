"""Read and write MXNet/insightface RecordIO (``.rec`` + ``.idx``) without mxnet.

File layout (little-endian), as written by dmlc-core's ``RecordIOWriter``:

* a ``.rec`` is a sequence of chunks: uint32 magic ``0xced7230a``, uint32 ``lrec`` (low 29 bits:
  chunk length; upper 3 bits: continuation flag), the chunk bytes, zero padding to 4 bytes;
* a record is one chunk with flag 0, or (when its bytes contain the magic word at a 4-byte-aligned
  position) a run of chunks flagged 1 (first), 2 (middle)..., 3 (last): the writer cut the record at
  each such magic word and dropped it. This module reassembles such records exactly as dmlc-core
  does (parts joined by the magic word) and its writer splits them the same way, so files stay
  interchangeable with mxnet;
* the record payload starts with ``struct 'IfQQ'`` = flag, label, id, id2; when flag > 0, ``flag``
  float32 labels follow (the label field is then unused); the rest is the encoded image;
* a ``.idx`` is text, one ``key<TAB>byte offset`` line per record.

insightface datasets store a header at key 0 (flag > 0, empty image) whose labels are
(first key past the images, end key): image records use keys 1 .. label[0]-1, and the keys after
them hold per-identity index records. Here a record with key 0 and flag > 0 counts as that header.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK_HEAD = struct.Struct("<II")  # magic, lrec
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
# Continuation flags of a chunk (upper 3 bits of lrec).
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 (24 bytes)

PathLike = str | os.PathLike


class RecordIOError(ValueError):
    """A malformed ``.rec`` or ``.idx`` file; the message names the file and the byte offset or line."""


@dataclass(frozen=True)
class RecordIORecord:
    """One decoded record: ``label`` is a float when ``flag == 0``, else a tuple of ``flag`` floats."""

    key: int
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int
    image: bytes

    @property
    def labels(self) -> tuple[float, ...]:
        """The label(s) as a tuple, whatever the flag."""
        return self.label if isinstance(self.label, tuple) else (self.label,)


def _error(path: PathLike, offset: int, problem: str) -> RecordIOError:
    return RecordIOError(f"{os.fspath(path)}: {problem} at byte offset {offset}")


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def is_header_record(record: RecordIORecord) -> bool:
    """Whether ``record`` is an insightface header (key 0 with flag > 0)."""
    return record.key == 0 and record.flag > 0


# ---------------------------------------------------------------- payload (IfQQ header + labels + image)


def pack_payload(record: RecordIORecord) -> bytes:
    """Serialise a record's payload: ``IfQQ`` header, ``flag`` float32 labels when flag > 0, image bytes."""
    if isinstance(record.label, tuple):
        if record.flag != len(record.label) or record.flag == 0:
            raise ValueError(
                f"record {record.key}: flag {record.flag} must equal the number of labels ({len(record.label)}) and be > 0"
            )
        head = IR_HEADER.pack(record.flag, 0.0, record.id, record.id2)
        return head + np.asarray(record.label, dtype="<f4").tobytes() + bytes(record.image)
    if record.flag != 0:
        raise ValueError(f"record {record.key}: a scalar label needs flag 0, got flag {record.flag}")
    return IR_HEADER.pack(0, float(record.label), record.id, record.id2) + bytes(record.image)


def unpack_payload(payload: bytes, key: int, path: PathLike = "<bytes>", offset: int = 0) -> RecordIORecord:
    """Parse a payload into a :class:`RecordIORecord`; RecordIOError (naming path/offset) if it is too short."""
    if len(payload) < IR_HEADER.size:
        raise _error(path, offset, f"record {key} payload of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, rec_id, rec_id2 = IR_HEADER.unpack_from(payload)
    body = IR_HEADER.size
    if flag > 0:
        end = body + 4 * flag
        if end > len(payload):
            raise _error(path, offset, f"record {key} declares {flag} labels but its payload has only {len(payload)} bytes")
        label = tuple(float(v) for v in np.frombuffer(payload, dtype="<f4", count=flag, offset=body))
        body = end
    return RecordIORecord(key=key, flag=flag, label=label, id=rec_id, id2=rec_id2, image=bytes(payload[body:]))


# ---------------------------------------------------------------- chunk level


def _read_chunk(f: BinaryIO, path: PathLike, offset: int) -> tuple[int, bytes] | None:
    """Read the chunk at the current position (``offset``); None at a clean end of file."""
    head = f.read(_CHUNK_HEAD.size)
    if not head:
        return None
    if len(head) < _CHUNK_HEAD.size:
        raise _error(path, offset, f"truncated chunk header ({len(head)} of 8 bytes)")
    magic, lrec = _CHUNK_HEAD.unpack(head)
    if magic != MAGIC:
        raise _error(path, offset, f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
    cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
    if cflag > _LAST:
        raise _error(path, offset, f"invalid continuation flag {cflag}")
    data = f.read(_pad4(length))
    if len(data) < _pad4(length):
        raise _error(path, offset, f"truncated record: chunk of {length} bytes has only {len(data)} left in the file")
    return cflag, data[:length]


def _read_record(f: BinaryIO, path: PathLike, offset: int) -> tuple[bytes, int] | None:
    """Read one (possibly multi-chunk) record starting at ``offset``; (payload, next offset) or None at EOF."""
    f.seek(offset)
    parts: list[bytes] = []
    pos = offset
    while True:
        chunk = _read_chunk(f, path, pos)
        if chunk is None:
            if parts:
                raise _error(path, offset, "truncated record: file ends inside a multi-chunk record")
            return None
        cflag, data = chunk
        if parts == [] and cflag in (_MIDDLE, _LAST):
            raise _error(path, pos, f"continuation chunk (flag {cflag}) where a record should start")
        if parts and cflag in (_WHOLE, _FIRST):
            raise _error(path, pos, f"chunk flag {cflag} inside a multi-chunk record started at {offset}")
        parts.append(data)
        pos += _CHUNK_HEAD.size + _pad4(len(data))
        if cflag in (_WHOLE, _LAST):
            return _MAGIC_BYTES.join(parts), pos


def _chunks(payload: bytes) -> list[tuple[int, bytes]]:
    """Split a payload at 4-byte-aligned magic words (dropped) into (flag, bytes) chunks, as dmlc-core does."""
    if len(payload) > _LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds fewer than 2**29 bytes, got {len(payload)}")
    aligned = np.frombuffer(payload, dtype="<u4", count=len(payload) // 4)
    cuts = [4 * int(i) for i in np.flatnonzero(aligned == MAGIC)]
    if not cuts:
        return [(_WHOLE, payload)]
    starts = [0] + [c + 4 for c in cuts]
    ends = cuts + [len(payload)]
    flags = [_FIRST] + [_MIDDLE] * (len(cuts) - 1) + [_LAST]
    return [(fl, payload[s:e]) for fl, s, e in zip(flags, starts, ends)]


# ---------------------------------------------------------------- public reading API


def read_index(idx_path: PathLike) -> dict[int, int]:
    """Parse a ``.idx`` file into {key: byte offset}; RecordIOError naming the file and line if malformed."""
    index: dict[int, int] = {}
    with open(idx_path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
                if len(fields) != 2 or offset < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise RecordIOError(f"{os.fspath(idx_path)}: line {lineno}: expected 'key<TAB>offset', got {line!r}") from None
            if key in index:
                raise RecordIOError(f"{os.fspath(idx_path)}: line {lineno}: duplicate key {key}")
            index[key] = offset
    return index


def _record_at(f: BinaryIO, path: PathLike, key: int, offset: int, size: int) -> RecordIORecord:
    if offset >= size:
        raise _error(path, offset, f"index entry for key {key} points past the end of the file ({size} bytes)")
    got = _read_record(f, path, offset)
    if got is None:  # unreachable given the size check, kept for type narrowing
        raise _error(path, offset, f"no record for key {key}")
    return unpack_payload(got[0], key, path, offset)


def iter_recordio(
    rec_path: PathLike,
    idx_path: PathLike | None = None,
    keys: Iterable[int] | None = None,
    include_header: bool = False,
) -> Iterator[RecordIORecord]:
    """Yield the records of ``rec_path``.

    Without ``idx_path`` the file is scanned in order and record keys are their ordinals (0, 1, ...),
    which is what insightface's writers produce. With it, records are read at their indexed offsets
    in ascending key order, or for ``keys`` only (in the order given). The insightface header record
    (key 0, flag > 0) is skipped unless ``include_header``. Raises RecordIOError on bad magic,
    truncation, or an index offset past the end of the file.
    """
    path = Path(rec_path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if idx_path is None:
            if keys is not None:
                raise ValueError("iter_recordio: selecting keys needs an idx_path")
            offset, key = 0, 0
            while (got := _read_record(f, path, offset)) is not None:
                record = unpack_payload(got[0], key, path, offset)
                if include_header or not is_header_record(record):
                    yield record
                offset, key = got[1], key + 1
            return
        index = read_index(idx_path)
        wanted = sorted(index) if keys is None else list(keys)
        for key in wanted:
            if key not in index:
                raise RecordIOError(f"{os.fspath(idx_path)}: no entry for key {key}")
            record = _record_at(f, path, key, index[key], size)
            if include_header or not is_header_record(record):
                yield record


def read_header(rec_path: PathLike, idx_path: PathLike | None = None) -> RecordIORecord | None:
    """The insightface header record (key 0, flag > 0), or None if record 0 is ordinary data or absent."""
    if idx_path is not None and 0 not in read_index(idx_path):
        return None
    records = iter_recordio(rec_path, idx_path, keys=None if idx_path is None else [0], include_header=True)
    try:
        first = next(records, None)
    finally:
        records.close()
    return first if first is not None and is_header_record(first) else None


# ---------------------------------------------------------------- writing


def write_recordio(
    rec_path: PathLike, idx_path: PathLike, records: Iterable[RecordIORecord], overwrite: bool = False
) -> int:
    """Write ``records`` as a ``.rec`` + ``.idx`` pair readable by mxnet; returns the number written.

    Keys must be unique. Refuses to replace existing files unless ``overwrite``.
    """
    for p in (rec_path, idx_path):
        if not overwrite and os.path.exists(p):
            raise FileExistsError(f"{os.fspath(p)} exists; pass overwrite=True to replace it")
    seen: set[int] = set()
    with open(rec_path, "wb") as rec, open(idx_path, "w", encoding="ascii") as idx:
        for record in records:
            if record.key in seen:
                raise ValueError(f"write_recordio: duplicate key {record.key}")
            seen.add(record.key)
            idx.write(f"{record.key}\t{rec.tell()}\n")
            for cflag, data in _chunks(pack_payload(record)):
                rec.write(_CHUNK_HEAD.pack(MAGIC, (cflag << _LENGTH_BITS) | len(data)))
                rec.write(data + b"\0" * (_pad4(len(data)) - len(data)))
    return len(seen)
