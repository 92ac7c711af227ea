"""On-disk framing: segment header, length+CRC records, and the sealed-segment index.

Record layout (little endian)::

    crc32 u32 | payload_len u32 | index u64 | term u64 | type u8 | pad 3 | payload

The CRC covers everything after itself (the rest of the header and the payload),
so a flipped bit in the length, index or term is caught as surely as one in the data.

Segment header (32 bytes): magic, base index, prev_term (term of base-1, which
chains a segment to its predecessor and answers term(first_index - 1) after
compaction), reserved, crc32 of the first 28 bytes.

Index sidecar (``.idx``): append-only chunks, each adding per-entry offsets,
terms and types and stating the byte length and crc32 of the segment prefix
described so far. The active segment gets a chunk every few MiB (a checkpoint:
opening scans only what follows it) and a final one when sealed (then it covers
the whole file). Opening a segment is a read and a C-speed crc pass, never a
per-record Python loop over the whole file. Chunks are never fsynced: any that
do not match the segment's bytes are ignored and the index rebuilt by a scan.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from zraft.core.types import Entry, EntryType

REC_CRC = struct.Struct("<I")
REC_BODY = struct.Struct("<IQQB3x")
REC_HDR_BYTES = REC_CRC.size + REC_BODY.size  # 28
_REC_HDR = struct.Struct("<IIQQB3x")
_LEN = struct.Struct("<I")  #: the length field, first in what the checksum covers
_INDEX, _INDEX_AT = struct.Struct("<Q"), 8  #: where a record header holds its index
assert _REC_HDR.size == REC_HDR_BYTES

SEG_MAGIC = b"ZRSEG001"
SEG_HDR = struct.Struct("<8sQQI")  # + crc32 u32
SEG_HDR_BYTES = SEG_HDR.size + 4  # 32

IDX_MAGIC = b"ZRIDX002"
#: chunk header: magic, base, first (position in segment), count, prefix_size, prefix_crc
IDX_HDR = struct.Struct("<8sQQQQI")  # + crc32 u32 of header and body
IDX_HDR_BYTES = IDX_HDR.size + 4
IDX_ENTRY_BYTES = 17  # offset i64, term i64, type u8

NAME_DIGITS = 20
_ENTRY_TYPES = frozenset(int(t) for t in EntryType)


def segment_name(base: int) -> str:
    """Fixed width so lexical order equals numeric order."""
    return f"{base:0{NAME_DIGITS}d}.seg"


def parse_segment_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "seg" or not dot or len(stem) != NAME_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def encode_record(entry: Entry) -> bytes:
    data = entry.data
    head = REC_BODY.pack(len(data), entry.index, entry.term, entry.type)
    return b"".join((REC_CRC.pack(zlib.crc32(data, zlib.crc32(head))), head, data))


def encode_segment_header(base: int, prev_term: int) -> bytes:
    head = SEG_HDR.pack(SEG_MAGIC, base, prev_term, 0)
    return head + REC_CRC.pack(zlib.crc32(head))


def decode_segment_header(buf: bytes) -> tuple[int, int] | None:
    """(base, prev_term), or None if the header is short or fails its checksum."""
    if len(buf) < SEG_HDR_BYTES:
        return None
    head = buf[: SEG_HDR.size]
    (crc,) = REC_CRC.unpack_from(buf, SEG_HDR.size)
    if zlib.crc32(head) != crc:
        return None
    magic, base, prev_term, _ = SEG_HDR.unpack(head)
    if magic != SEG_MAGIC:
        return None
    return base, prev_term


def decode_record_at(buf: bytes | memoryview, off: int, path: Path) -> Entry:
    """Decode one record known to be in range; a checksum failure is corruption."""
    from zraft.storage.errors import CorruptLog

    if off + REC_HDR_BYTES > len(buf):
        raise CorruptLog(f"{path}: record at offset {off} is cut short", path=str(path), offset=off)
    (crc,) = REC_CRC.unpack_from(buf, off)
    size, index, term, typ = REC_BODY.unpack_from(buf, off + REC_CRC.size)
    end = off + REC_HDR_BYTES + size
    if end > len(buf) or zlib.crc32(buf[off + REC_CRC.size : end]) != crc:
        raise CorruptLog(
            f"{path}: record at offset {off} fails its checksum", path=str(path), offset=off
        )
    return Entry(term, index, EntryType(typ), bytes(buf[off + REC_HDR_BYTES : end]))


@dataclass(slots=True)
class ScanResult:
    """What a sequential scan of one segment's records found."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    terms: array[int] = field(default_factory=lambda: array("q"))
    types: bytearray = field(default_factory=bytearray)
    end: int = 0  #: byte offset just past the last good record
    bad_reason: str = ""  #: why the scan stopped before end of file ("" if it did not)
    torn: bool = False  #: the bad bytes look like an interrupted final write


def scan_records(
    buf: bytes, start: int, first_index: int, prev_term: int, max_record_bytes: int
) -> ScanResult:
    """Walk records from ``start``; stop at the first record that is not valid.

    Validity: fits in the file, CRC matches, index is the next one, term does not
    go backwards, type is known. The result says whether the bad bytes look like a
    torn write (nothing intact follows the bad record) or damage inside the log
    (the record after it is intact, so the bad one was once whole).
    The loop is the hot path of opening a log, hence the local-variable style.
    """
    res = ScanResult(end=start)
    off, expect, last_term, size = start, first_index, prev_term, len(buf)
    view, unpack, crc32 = memoryview(buf), _REC_HDR.unpack_from, zlib.crc32
    add_off, add_term, add_type = res.offsets.append, res.terms.append, res.types.append
    max_type = max(_ENTRY_TYPES)
    while off + REC_HDR_BYTES <= size:
        crc, length, index, term, typ = unpack(buf, off)
        end = off + REC_HDR_BYTES + length
        # no max_record_bytes test: an intact record is kept even if a later open
        # gives a smaller limit (cutting it as torn would lose synced data)
        if end > size or crc32(view[off + 4 : end]) != crc:
            break
        if index != expect or term < last_term or typ > max_type:
            break
        add_off(off)
        add_term(term)
        add_type(typ)
        expect, last_term, off = expect + 1, term, end
    res.end = off
    if off < size:
        res.bad_reason, res.torn = _classify(buf, off, expect, max_record_bytes)
    return res


def _classify(buf: bytes, off: int, expect: int, max_record_bytes: int) -> tuple[str, bool]:
    """Why the record at ``off`` is bad, and whether that looks like a torn final write."""
    size = len(buf)
    if size - off < REC_HDR_BYTES:
        return "partial record header", True
    crc, length, index, term, typ = _REC_HDR.unpack_from(buf, off)
    end = off + REC_HDR_BYTES + length

    def damaged_length() -> bool:
        """Damage in place if one flipped length bit explains the record exactly, or if
        a header naming the expected index is followed, within the largest record, by
        an intact record that could come next (the length took more than one flip)."""
        return _length_bit_flipped(buf, off, crc, length, max_record_bytes) or (
            index == expect
            and typ <= max(_ENTRY_TYPES)
            and _record_follows(buf, off, expect + 1, term, max_record_bytes)
        )

    if end > size:
        return "record runs past end of file", not damaged_length()
    if zlib.crc32(buf[off + 4 : end]) != crc:
        flipped = _valid_record_at(buf, end, expect + 1, max_record_bytes) or damaged_length()
        return "checksum mismatch", not flipped
    return f"record index {index} term {term} does not follow index {expect - 1}", False


def _record_follows(buf: bytes, off: int, index: int, min_term: int, max_record_bytes: int) -> bool:
    """Is there an intact record for ``index``, of a term that may follow ``min_term``,
    where the record at ``off`` could have ended? (Its true length is unknown.)

    A stale record of an older term behind a new one is not proof: that is what a torn
    overwrite of a cut suffix looks like if the cut was lost. At most 64 candidates."""
    needle = _INDEX.pack(index)
    at = off + REC_HDR_BYTES + _INDEX_AT
    stop = min(len(buf), off + 2 * REC_HDR_BYTES + max_record_bytes)
    for _ in range(64):
        at = buf.find(needle, at, stop)
        if at == -1:
            return False
        start = at - _INDEX_AT
        if start + REC_HDR_BYTES > len(buf):
            return False  # too close to the end for a whole header: nor are later ones
        if _REC_HDR.unpack_from(buf, start)[3] >= min_term and _valid_record_at(
            buf, start, index, max_record_bytes
        ):
            return True
        at += 1
    return False


def _length_bit_flipped(buf: bytes, off: int, crc: int, length: int, max_record_bytes: int) -> bool:
    """Does one flipped bit of the length field explain the bad record exactly?

    The checksum covers the length, so a length that differs in one bit and makes the
    record check out is the record as written: damage in place, not a torn write. (A
    torn write leaves a partial record, never a whole one behind a one-bit-wrong
    length.) At most 32 checksums, and only on a damaged record."""
    size, body = len(buf), bytearray(buf[off + 4 : off + REC_HDR_BYTES])
    for bit in range(32):
        fixed = length ^ (1 << bit)
        end = off + REC_HDR_BYTES + fixed
        if fixed > max_record_bytes or end > size:
            continue
        _LEN.pack_into(body, 0, fixed)
        if zlib.crc32(buf[off + REC_HDR_BYTES : end], zlib.crc32(body)) == crc:
            return True
    return False


def _valid_record_at(buf: bytes, off: int, index: int, max_record_bytes: int) -> bool:
    """Is there an intact record for ``index`` at ``off``?

    Tells a flipped bit (the next record is fine: damage inside the log) from a
    torn write (garbage, zeros or end of file follow: an interrupted last write).
    """
    if off + REC_HDR_BYTES > len(buf):
        return False
    crc, length, at_index, _term, _typ = _REC_HDR.unpack_from(buf, off)
    end = off + REC_HDR_BYTES + length
    if at_index != index or length > max_record_bytes or end > len(buf):
        return False
    return bool(zlib.crc32(buf[off + 4 : end]) == crc)


def encode_index_chunk(
    base: int,
    first: int,
    offsets: array[int],
    terms: array[int],
    types: bytes,
    prefix_size: int,
    prefix_crc: int,
) -> bytes:
    """One chunk: entries [first, first + len(offsets)) of the segment at ``base``."""
    assert len(offsets) == len(terms) == len(types)
    head = IDX_HDR.pack(IDX_MAGIC, base, first, len(offsets), prefix_size, prefix_crc)
    body = _le_bytes(offsets) + _le_bytes(terms) + bytes(types)
    return head + REC_CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


@dataclass(slots=True)
class SegmentIndex:
    base: int
    seg_size: int  #: bytes of the segment the index describes
    seg_crc: int  #: crc32 of those bytes
    offsets: array[int]
    terms: array[int]
    types: bytes


def decode_index(buf: bytes, base: int) -> SegmentIndex | None:
    """Concatenate the valid, contiguous chunks; None if there is none."""
    offsets, terms, types = array("q"), array("q"), bytearray()
    off, found = 0, None
    while off + IDX_HDR_BYTES <= len(buf):
        magic, b, first, count, prefix_size, prefix_crc = IDX_HDR.unpack_from(buf, off)
        (crc,) = REC_CRC.unpack_from(buf, off + IDX_HDR.size)
        body_at = off + IDX_HDR_BYTES
        end = body_at + count * IDX_ENTRY_BYTES
        if magic != IDX_MAGIC or b != base or first != len(offsets) or end > len(buf):
            break
        if zlib.crc32(buf[body_at:end], zlib.crc32(buf[off : off + IDX_HDR.size])) != crc:
            break
        offsets.extend(_from_le(buf[body_at : body_at + 8 * count]))
        terms.extend(_from_le(buf[body_at + 8 * count : body_at + 16 * count]))
        types += buf[body_at + 16 * count : end]
        found, off = (prefix_size, prefix_crc), end
    if found is None:
        return None
    return SegmentIndex(base, found[0], found[1], offsets, terms, bytes(types))


def _le_bytes(arr: array[int]) -> bytes:
    if sys.byteorder == "little":
        return arr.tobytes()
    swapped = array("q", arr)
    swapped.byteswap()
    return swapped.tobytes()


def _from_le(buf: bytes) -> array[int]:
    arr = array("q")
    arr.frombytes(buf)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr
