"""Opening a log directory: verify sealed segments, cut a torn tail, finish a truncation.

``recover(..., repair=False)`` raises :class:`CorruptLog` on damage that is not a
torn final write. ``repair=True`` instead cuts the log at the first bad record
(deleting every later segment) and reports what it discarded.

What counts as torn: only in the newest segment (sealed segments were fsynced
before the next one got any data), a bad record after which no intact record
follows. After a power loss an unsynced batch may reach the disk in any page
order; if an intact record still follows the damage, the open refuses
(CorruptLog) rather than silently dropping it, and ``repair`` is the way on.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from zraft.storage import records as rec
from zraft.storage.errors import CorruptLog
from zraft.storage.fileutil import fsync_dir
from zraft.storage.log import TRUNCATE_MARKER, Segment, SegmentLog, read_marker

log = structlog.get_logger("zraft.storage")


@dataclass(slots=True)
class Discarded:
    """One cut made by repair (or by torn-tail recovery)."""

    path: str
    offset: int
    reason: str
    removed_files: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Loaded:
    seg: Segment
    terms: array[int]
    types: bytes
    crc: int
    indexed: int = 0  #: entries the on-disk .idx provably describes
    indexed_end: int = 0  #: segment bytes those entries span


@dataclass(slots=True)
class _Opts:
    durable: bool
    max_record_bytes: int
    verify_sealed: bool


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for name in os.listdir(directory):
        base = rec.parse_segment_name(name)
        if base is not None:
            found.append((base, directory / name))
    found.sort()
    return found


def recover(
    directory: Path,
    *,
    segment_bytes: int,
    durable: bool,
    max_record_bytes: int,
    verify_sealed: bool = True,
    repair: bool = False,
) -> tuple[SegmentLog, list[Discarded]]:
    """Rebuild a SegmentLog from ``directory`` (see module doc)."""
    slog = SegmentLog(
        directory,
        segment_bytes=segment_bytes,
        durable=durable,
        max_record_bytes=max_record_bytes,
        verify_sealed=verify_sealed,
    )
    opts = _Opts(durable, max_record_bytes, verify_sealed)
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            os.unlink(directory / name)
    files = list_segments(directory)
    discards: list[Discarded] = []
    marker = _read_marker(directory, repair, discards)
    if marker is not None and files and marker < files[0][0]:
        # a cut never goes below the first entry (compaction waits for it): a marker from
        # elsewhere (a copied or restored dir) would delete every segment
        err = CorruptLog(
            f"{directory / TRUNCATE_MARKER}: resumes a cut at index {marker}, below the log's"
            f" first segment ({files[0][0]}); not applying it",
            path=str(directory / TRUNCATE_MARKER),
        )
        if not repair:
            raise err
        os.unlink(directory / TRUNCATE_MARKER)  # the log stays; the stray marker goes
        discards.append(Discarded(err.path, 0, str(err)))
        marker = None
    if marker is not None:
        log.warning("storage_truncation_resumed", index=marker, dir=str(directory))
        for _base, path in reversed([f for f in files if f[0] > marker]):
            _remove_segment(path)
        files = [f for f in files if f[0] <= marker]
        if files:  # the segment being cut: its checkpoint may predate the cut (see _load)
            _unlink_quiet(files[-1][1].with_suffix(".idx"))
            if durable:
                fsync_dir(directory)
    loaded = _load_all(files, opts, repair, discards)
    if marker is not None:
        if loaded and loaded[-1].seg.base <= marker <= loaded[-1].seg.last:
            _cut_loaded(loaded[-1], marker, durable)
        os.unlink(directory / TRUNCATE_MARKER)
        if durable:
            fsync_dir(directory)
    if loaded:
        _install(slog, loaded)
    return slog, discards


def _read_marker(directory: Path, repair: bool, discards: list[Discarded]) -> int | None:
    try:
        return read_marker(directory)
    except CorruptLog as err:
        if not repair:
            raise
        os.unlink(directory / TRUNCATE_MARKER)
        discards.append(Discarded(err.path, 0, str(err)))
        return None


def _load_all(
    files: list[tuple[int, Path]], opts: _Opts, repair: bool, discards: list[Discarded]
) -> list[_Loaded]:
    loaded: list[_Loaded] = []
    for n, (base, path) in enumerate(files):
        tail = n == len(files) - 1
        prev = loaded[-1] if loaded else None
        try:
            item = _load(path, base, prev, tail, opts)
        except CorruptLog as err:
            if not repair:
                raise
            later = [p for _, p in files[n + 1 :]]
            discards.append(_repair_cut(path, err, later, opts.durable))
            item = _load(path, base, prev, True, opts) if path.exists() else None
            tail = True
        if item is None:  # a torn-away tail segment: the previous one is the tail again
            break
        loaded.append(item)
        if tail:
            break
    return loaded


def _load(path: Path, base: int, prev: _Loaded | None, tail: bool, opts: _Opts) -> _Loaded | None:
    buf = path.read_bytes()
    header = rec.decode_segment_header(buf)
    if header is None:
        # a new segment's header is its first write: torn, only zeros (or nothing) follow it
        rest_zero = buf.count(0, rec.SEG_HDR_BYTES) == max(0, len(buf) - rec.SEG_HDR_BYTES)
        synced = _synced_watermark(path, base) if tail else 0
        if tail and rest_zero and synced <= rec.SEG_HDR_BYTES:
            log.warning("storage_torn_tail_cut", file=str(path), offset=0, reason="torn header")
            _remove_segment(path)
            return None
        where = f"{path}: bad segment header at offset 0"
        if synced > rec.SEG_HDR_BYTES:
            where += f", inside the first {synced} bytes a checkpoint shows were synced"
        raise CorruptLog(where, path=str(path), offset=0)
    hbase, prev_term = header
    _check_chain(path, base, hbase, prev_term, prev)
    known = _load_from_index(path, buf, base, prev_term, opts, sealed=not tail)
    if known is not None and not tail:
        return known
    offsets, terms, types = array("q"), array("q"), bytearray()
    start, first, last_term = rec.SEG_HDR_BYTES, base, prev_term
    synced = 0  #: bytes a checkpoint says were synced (those past a valid one are scanned)
    if known is not None:  # the tail's checkpoint: only bytes after it need a scan
        offsets, terms, types = known.seg.offsets, known.terms, bytearray(known.types)
        start, first, last_term = known.seg.end, base + len(terms), terms[-1]
    elif tail:
        synced = _synced_watermark(path, base)
    res = rec.scan_records(buf, start, first, last_term, opts.max_record_bytes)
    if synced > res.end:  # cut short, or damaged, below what a checkpoint says was synced
        why = res.bad_reason or "file ends"
        raise CorruptLog(
            f"{path}: {why} at offset {res.end}, inside the first {synced} bytes a checkpoint"
            " shows were synced",
            path=str(path),
            offset=res.end,
        )
    if res.end < len(buf):
        if not (tail and res.torn):
            where = f"{path}: {res.bad_reason} at offset {res.end}"
            raise CorruptLog(where, path=str(path), offset=res.end)
        log.warning(
            "storage_torn_tail_cut",
            file=str(path),
            offset=res.end,
            reason=res.bad_reason,
            discarded_bytes=len(buf) - res.end,
        )
        _truncate_file(path, res.end, opts.durable)
    if known is None and tail:  # kept until here: it vouched for the bytes scanned above
        _unlink_quiet(path.with_suffix(".idx"))  # stale: new chunks must not follow it
    offsets.extend(res.offsets)
    terms.extend(res.terms)
    types += res.types
    seg = Segment(path, base, prev_term, offsets, res.end)
    item = _Loaded(seg, terms, bytes(types), zlib.crc32(buf[: res.end]))
    if known is not None:
        item.indexed, item.indexed_end = first - base, start
    elif not tail and _rewrite_index(item):
        item.indexed, item.indexed_end = len(offsets), res.end
    return item


def _check_chain(path: Path, base: int, hbase: int, prev_term: int, prev: _Loaded | None) -> None:
    if hbase != base:
        raise CorruptLog(
            f"{path}: header says base {hbase}, name says {base} (offset 0)",
            path=str(path),
            offset=0,
        )
    if prev is None:
        return
    last_term = prev.terms[-1] if len(prev.terms) else prev.seg.prev_term
    if base != prev.seg.last + 1 or prev_term != last_term:
        raise CorruptLog(
            f"{path}: segment at offset 0 does not chain to {prev.seg.path.name}"
            f" (starts at {base} after term {prev_term}; previous ends at {prev.seg.last}"
            f" term {last_term})",
            path=str(path),
            offset=0,
        )


def _synced_watermark(path: Path, base: int) -> int:
    """How many bytes of the segment its index says were synced (0 if it says nothing).

    Checkpoints are appended only after a sync, so damage before this offset is damage
    in place, never a torn write, even where nothing intact follows it. The checkpoint
    may be stale only if a cut's unlink was lost, which truncate_suffix makes durable."""
    try:
        idx = rec.decode_index(path.with_suffix(".idx").read_bytes(), base)
    except OSError:
        return 0
    return idx.seg_size if idx is not None else 0


def _load_from_index(
    path: Path, buf: bytes, base: int, prev_term: int, opts: _Opts, *, sealed: bool
) -> _Loaded | None:
    """Adopt the ``.idx`` sidecar if it provably describes the file's bytes.

    For a sealed segment it must cover the whole file; for the tail it is a
    checkpoint covering a prefix, always verified by crc32 of that prefix.
    """
    try:
        idx = rec.decode_index(path.with_suffix(".idx").read_bytes(), base)
    except FileNotFoundError:
        idx = None
    size_ok = idx is not None and (idx.seg_size == len(buf) if sealed else idx.seg_size <= len(buf))
    if idx is None or idx.base != base or not size_ok or not len(idx.offsets):
        if sealed:
            log.info("storage_index_rebuilt", file=str(path))
        return None
    if (opts.verify_sealed or not sealed) and zlib.crc32(buf[: idx.seg_size]) != idx.seg_crc:
        return None  # a scan will name the damaged record, if there is one
    if idx.offsets[0] != rec.SEG_HDR_BYTES or idx.terms[0] < prev_term:
        return None
    if idx.offsets[-1] >= idx.seg_size:
        return None
    seg = Segment(path, base, prev_term, idx.offsets, idx.seg_size)
    count = len(idx.offsets)
    return _Loaded(seg, idx.terms, idx.types, idx.seg_crc, count, idx.seg_size)


def _rewrite_index(item: _Loaded) -> bool:
    """Write a one-chunk index for a scanned segment; False if that failed (it is optional)."""
    seg = item.seg
    data = rec.encode_index_chunk(
        seg.base, 0, seg.offsets, item.terms, item.types, seg.end, item.crc
    )
    try:
        seg.path.with_suffix(".idx").write_bytes(data)
    except OSError:
        _unlink_quiet(seg.path.with_suffix(".idx"))
        return False
    return True


def _cut_loaded(item: _Loaded, index: int, durable: bool) -> None:
    seg = item.seg
    k = index - seg.base
    cut = seg.offsets[k]
    _truncate_file(seg.path, cut, durable)
    _unlink_quiet(seg.path.with_suffix(".idx"))
    item.indexed = item.indexed_end = 0
    del seg.offsets[k:], item.terms[k:]
    item.types = item.types[:k]
    seg.end = cut
    with open(seg.path, "rb") as f:
        item.crc = zlib.crc32(f.read(cut))


def _repair_cut(path: Path, err: CorruptLog, later: list[Path], durable: bool) -> Discarded:
    for p in reversed(later):
        _remove_segment(p)
    if err.offset < rec.SEG_HDR_BYTES:
        _remove_segment(path)
    else:
        _truncate_file(path, err.offset, durable)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.with_suffix(".idx"))
    if durable:
        fsync_dir(path.parent)
    gone = [str(p) for p in later]
    log.warning(
        "storage_repair_discarded", file=str(path), offset=err.offset, reason=str(err), files=gone
    )
    return Discarded(str(path), err.offset, str(err), gone)


def _install(slog: SegmentLog, loaded: list[_Loaded]) -> None:
    terms = array("q")
    config: list[int] = []
    for item in loaded:
        terms.extend(item.terms)
        at = item.types.find(2)
        while at >= 0:
            config.append(item.seg.base + at)
            at = item.types.find(2, at + 1)
    tail = loaded[-1]
    slog.install([i.seg for i in loaded], terms, config, tail.crc)
    slog.set_checkpoint(tail.indexed, tail.indexed_end)


def _truncate_file(path: Path, size: int, durable: bool) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_segment(path: Path) -> None:
    for p in (path.with_suffix(".idx"), path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
