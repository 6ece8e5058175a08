"""RecordIO reader/writer against an independent struct-level writer of the format."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from fr.data.recordio import (
    RecordIOError,
    RecordIORecord,
    iter_recordio,
    pack_payload,
    read_header,
    read_index,
    write_recordio,
)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


# ---------------------------------------------------------------- independent reference writer


def ref_chunk(cflag: int, data: bytes) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def ref_payload(labels: tuple[float, ...] | float, rec_id: int, image: bytes) -> bytes:
    if isinstance(labels, tuple):
        head = struct.pack("<IfQQ", len(labels), 0.0, rec_id, 0) + struct.pack(f"<{len(labels)}f", *labels)
    else:
        head = struct.pack("<IfQQ", 0, labels, rec_id, 0)
    return head + image


# Key 0: insightface header (images are keys 1..3, identity records 4..5).
# Key 2's image holds the magic word at an unaligned payload offset (26): no split.
# Key 3's image holds it at aligned offset 24 + 12 + 4 = 40: the writer must split there.
SPEC = [
    (0, (4.0, 6.0), b""),
    (1, 0.0, b"\xff\xd8abc"),
    (2, 1.0, b"xy" + MAGIC_BYTES + b"0123456"),
    (3, (2.0, 0.5, 7.25), b"abcd" + MAGIC_BYTES + b"tail!"),
    (4, (1.0, 3.0), b""),
    (5, (3.0, 4.0), b""),
]


def expected_records() -> list[RecordIORecord]:
    return [
        RecordIORecord(key, len(lab) if isinstance(lab, tuple) else 0, lab, key, 0, image) for key, lab, image in SPEC
    ]


def write_reference(tmp_path) -> tuple:
    rec, idx, lines = bytearray(), [], []
    for key, labels, image in SPEC:
        lines.append(f"{key}\t{len(rec)}\n")
        payload = ref_payload(labels, key, image)
        if key == 3:  # hand-split at the aligned magic word, which is dropped
            cut = 24 + 12 + 4
            assert payload[cut : cut + 4] == MAGIC_BYTES
            rec += ref_chunk(1, payload[:cut]) + ref_chunk(3, payload[cut + 4 :])
        else:
            rec += ref_chunk(0, payload)
    rec_path, idx_path = tmp_path / "ref.rec", tmp_path / "ref.idx"
    rec_path.write_bytes(bytes(rec))
    idx_path.write_text("".join(lines))
    return rec_path, idx_path


def chunk_flags(data: bytes) -> list[int]:
    """Continuation flags of every chunk, walking the file with struct only."""
    flags, pos = [], 0
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)
    return flags


# ---------------------------------------------------------------- reading


def test_reader_reads_reference_file(tmp_path):
    rec, idx = write_reference(tmp_path)
    expected = expected_records()
    assert list(iter_recordio(rec, idx)) == expected[1:]
    assert list(iter_recordio(rec, idx, include_header=True)) == expected
    assert list(iter_recordio(rec)) == expected[1:]  # sequential scan, keys = ordinals
    assert list(iter_recordio(rec, idx, keys=[5, 3])) == [expected[5], expected[3]]
    assert read_header(rec, idx) == expected[0]
    assert read_header(rec) == expected[0]
    assert read_index(idx) == {k: v for k, v in (map(int, line.split("\t")) for line in idx.read_text().splitlines())}


def test_no_header_when_record_zero_is_data(tmp_path):
    records = [RecordIORecord(0, 0, 3.0, 0, 0, b"img0"), RecordIORecord(1, 0, 4.0, 1, 0, b"img1")]
    write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", records)
    assert read_header(tmp_path / "a.rec", tmp_path / "a.idx") is None
    assert list(iter_recordio(tmp_path / "a.rec", tmp_path / "a.idx")) == records


# ---------------------------------------------------------------- writing


def test_writer_output_is_byte_identical_to_reference(tmp_path):
    ref_rec, ref_idx = write_reference(tmp_path)
    n = write_recordio(tmp_path / "ours.rec", tmp_path / "ours.idx", expected_records())
    assert n == len(SPEC)
    assert (tmp_path / "ours.rec").read_bytes() == ref_rec.read_bytes()
    assert (tmp_path / "ours.idx").read_text() == ref_idx.read_text()


def test_writer_round_trip_with_multi_chunk_records(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for key in (7, 2, 11, 3):
        image = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        records.append(RecordIORecord(key, 0, float(key) / 4, key * 10, key, image))
    # Payload offset 24 + 4 + 4 = 32: consecutive aligned magic words -> first, empty middles, last.
    records.append(RecordIORecord(20, 1, (5.0,), 20, 0, b"abcd" + MAGIC_BYTES * 3 + b"z"))
    write_recordio(tmp_path / "r.rec", tmp_path / "r.idx", records)
    assert chunk_flags((tmp_path / "r.rec").read_bytes())[-4:] == [1, 2, 2, 3]
    assert list(iter_recordio(tmp_path / "r.rec", tmp_path / "r.idx")) == sorted(records, key=lambda r: r.key)
    assert list(iter_recordio(tmp_path / "r.rec")) == [
        RecordIORecord(i, r.flag, r.label, r.id, r.id2, r.image) for i, r in enumerate(records)
    ]


def test_writer_refuses_bad_input(tmp_path):
    write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", [])
    with pytest.raises(FileExistsError):
        write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", [])
    dup = [RecordIORecord(1, 0, 0.0, 0, 0, b""), RecordIORecord(1, 0, 0.0, 0, 0, b"")]
    with pytest.raises(ValueError, match="duplicate key 1"):
        write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", dup, overwrite=True)
    with pytest.raises(ValueError, match="flag"):
        pack_payload(RecordIORecord(1, 2, (1.0,), 0, 0, b""))
    with pytest.raises(ValueError, match="flag"):
        pack_payload(RecordIORecord(1, 1, 1.0, 0, 0, b""))


# ---------------------------------------------------------------- corrupt files


def test_bad_magic_names_file_and_offset(tmp_path):
    rec, idx = write_reference(tmp_path)
    offset = read_index(idx)[2]
    data = bytearray(rec.read_bytes())
    data[offset] ^= 0xFF
    rec.write_bytes(bytes(data))
    for source in (idx, None):
        with pytest.raises(RecordIOError, match="bad magic") as err:
            list(iter_recordio(rec, source))
        assert str(rec) in str(err.value) and f"offset {offset}" in str(err.value)


def test_truncated_file_names_file_and_offset(tmp_path):
    rec, idx = write_reference(tmp_path)
    offset = read_index(idx)[5]
    rec.write_bytes(rec.read_bytes()[: offset + 8 + 10])  # chunk header + part of the payload
    for source in (idx, None):
        with pytest.raises(RecordIOError, match="truncated") as err:
            list(iter_recordio(rec, source))
        assert str(rec) in str(err.value) and f"offset {offset}" in str(err.value)
    rec.write_bytes(rec.read_bytes()[: offset + 5])  # inside the chunk header
    with pytest.raises(RecordIOError, match=f"truncated.*offset {offset}"):
        list(iter_recordio(rec))


def test_truncated_multi_chunk_record(tmp_path):
    rec, idx = write_reference(tmp_path)
    offset = read_index(idx)[3]
    rec.write_bytes(rec.read_bytes()[: offset + 8 + 40])  # keeps only the first chunk of key 3
    with pytest.raises(RecordIOError, match=f"multi-chunk.*offset {offset}"):
        list(iter_recordio(rec, idx, keys=[3]))


def test_idx_offset_past_end(tmp_path):
    rec, idx = write_reference(tmp_path)
    size = rec.stat().st_size
    idx.write_text(idx.read_text() + f"9\t{size + 100}\n")
    with pytest.raises(RecordIOError, match="past the end") as err:
        list(iter_recordio(rec, idx))
    assert str(rec) in str(err.value) and f"offset {size + 100}" in str(err.value)


def test_malformed_idx(tmp_path):
    rec, idx = write_reference(tmp_path)
    idx.write_text("0\t0\n1\tnot-a-number\n")
    with pytest.raises(RecordIOError, match="line 2") as err:
        read_index(idx)
    assert str(idx) in str(err.value)
    idx.write_text("0\t0\n0\t40\n")
    with pytest.raises(RecordIOError, match="duplicate key 0"):
        read_index(idx)
