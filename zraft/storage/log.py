"""The segmented, checksummed log: append, group-commit sync, truncate, compact, recover.

Memory per entry is two int64s (term, offset); payloads live on disk, apart from a
small bounded cache of the most recent appends so a leader replicating fresh
entries never reads them back. Every mutation updates the in-memory view only
after the disk operation succeeded, so an OSError leaves memory describing a
prefix of what is on disk (the Storage then refuses writes until reopened).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import struct
import threading
import time
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from zraft.core.types import Compacted, Entry, EntryType, Unavailable
from zraft.metrics import Histogram
from zraft.storage import records as rec
from zraft.storage.errors import CorruptLog, RecordTooLarge
from zraft.storage.fileutil import atomic_write, fsync_dir, pread_exact, write_all

log = structlog.get_logger("zraft.storage")

TRUNCATE_MARKER = "TRUNCATE"
_MARKER = struct.Struct("<8sQI")
_MARKER_MAGIC = b"ZRTRUNC1"
_CONFIG = int(EntryType.CONFIG)
MAX_READ_FDS = 16
CACHE_ENTRIES = 32768  #: recent entries kept for sending: deep pipelines reach back far
CACHE_BYTES = 8 << 20
#: Per-entry size overhead counted against entries(max_bytes); the same rule as
#: zraft.core.log.entry_size, so a batch is sized alike from memory or from disk.
ENTRY_OVERHEAD_BYTES = 16
#: The active segment's offset index is checkpointed to its .idx every this many
#: bytes (after a sync), so opening scans at most this much of the tail record by
#: record, and damage before the last checkpoint is never taken for a torn write.
CHECKPOINT_BYTES = 1 << 20


@dataclass(slots=True)
class Segment:
    path: Path
    base: int
    prev_term: int
    offsets: array[int] = field(default_factory=lambda: array("q"))
    end: int = rec.SEG_HDR_BYTES  #: bytes of valid data in the file

    @property
    def last(self) -> int:
        return self.base + len(self.offsets) - 1

    def record_end(self, k: int) -> int:
        return self.offsets[k + 1] if k + 1 < len(self.offsets) else self.end


class _Deleter:
    """Unlinks compacted segment files on a helper thread, oldest first, one at a time.

    Unlinking a full 64 MiB segment took 14 ms on an idle disk and up to 50 ms under
    load on our bench machine: on the reactor thread that stalls every request in
    flight. In order on one thread, so a crash part way still leaves a contiguous
    suffix; destructive operations (truncate, reset, close) wait for it first.
    """

    def __init__(self, directory: Path, durable: bool) -> None:
        self._dir, self._durable = directory, durable
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None
        self._leftover: list[Path] = []  #: a failed batch's undeleted files (thread-owned)

    def submit(self, paths: list[Path]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="zraft-unlink")
        # one job waits for the one before it: a failure is kept until drain() reports it
        self._last = self._pool.submit(self._delete, paths, self._last)

    def _delete(self, paths: list[Path], before: Future[None] | None) -> None:
        """Delete what an earlier failed batch left, then this batch, oldest first.

        A transient error must not end disk reclamation, nor may a later batch run past
        files an earlier one failed to delete: that would leave a gap in the log, which
        recovery refuses. The first failure is raised again for drain() to report.
        """
        earlier = before.exception() if before is not None else None
        todo, self._leftover = self._leftover + paths, []
        for k, path in enumerate(todo):
            try:
                self._delete_one(path)
            except OSError as exc:  # re-raised by drain(); said here in case nobody drains
                log.error("storage_unlink_failed", dir=str(self._dir), error=str(exc))
                self._leftover = todo[k:]
                if earlier is None:
                    raise
                break
        if earlier is not None:
            raise earlier

    def _delete_one(self, path: Path) -> None:
        """Unlink first, then free the blocks through a still-open fd.

        The name goes before any byte does: a crash part way never leaves a short
        segment file behind for recovery to find (it would refuse to open the log),
        and the durable unlink comes before the first truncation for a power loss too.
        """
        _unlink_quiet(_idx_path(path))
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            _unlink_quiet(path)
            if self._durable:
                fsync_dir(self._dir)
            _shrink_gradually(fd)
        finally:
            os.close(fd)

    def drain(self) -> None:
        """Wait for every submitted deletion; raise the first OSError if one failed."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class _Syncer:
    """fdatasyncs the active segment on a helper thread, each flush right after the last.

    A leader counts its own copy of an entry only once it is durable, but nothing else
    it does has to wait for that flush (Raft dissertation 10.2.1; etcd's asynchronous
    storage writes): with the flush off the reactor, follower acks and client requests
    keep flowing while the disk works. The reactor says how far it has written; the
    thread flushes the newest write and reports how far is durable through ``notify``.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._wanted = 0  #: written index that should become durable
        self._durable = 0  #: index the last completed flush covers
        self._busy = False  #: a flush is running: its fd must stay open
        self._error: OSError | None = None
        self._closing = False
        self.notify: Callable[[], None] = _nothing
        self.fsync_us = Histogram()  #: this thread's flushes (written only by it)

    def request(self, fd: int, index: int) -> None:
        """Flush ``fd`` (all writes through ``index`` are in it) as soon as possible."""
        with self._cv:
            self._raise_error()
            self._fd, self._wanted = fd, max(self._wanted, index)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zraft-fsync", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def durable(self) -> int:
        """How far the flushes have made the log durable; raises a flush's OSError."""
        with self._cv:
            self._raise_error()
            return self._durable

    def pending(self) -> bool:
        with self._cv:
            return self._wanted > self._durable and self._error is None

    def flushed(self) -> int:
        """How far the log is known durable, without raising a flush's failure."""
        with self._cv:
            return self._durable

    def pause(self) -> None:
        """Wait out a running flush and drop what is wanted: the caller flushes itself.

        Needed before the active fd is closed or cut, and before a synchronous sync.
        """
        with self._cv:
            while self._busy:
                self._cv.wait()
            self._wanted = self._durable
            self._raise_error()

    def set_durable(self, index: int) -> None:
        """The caller made everything through ``index`` durable (and nothing more)."""
        with self._cv:
            assert not self._busy
            self._durable = self._wanted = index

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closing and (self._wanted <= self._durable or self._error):
                    self._cv.wait()
                if self._closing:
                    return
                fd, target = self._fd, self._wanted
                self._busy = True
            error: OSError | None = None
            started = time.perf_counter_ns()
            try:
                os.fdatasync(fd)
            except OSError as exc:
                error = exc
            self.fsync_us.observe((time.perf_counter_ns() - started) // 1000)
            with self._cv:
                self._busy = False
                if error is None:
                    self._durable = max(self._durable, target)
                else:
                    self._error = error
                self._cv.notify_all()
            self.notify()


def _nothing() -> None:
    pass


class SegmentLog:
    """Segment files ``<base>.seg`` in one directory; the last one is the active tail."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int,
        durable: bool,
        max_record_bytes: int,
        verify_sealed: bool = True,
        checkpoint_bytes: int | None = None,
    ) -> None:
        assert segment_bytes > rec.SEG_HDR_BYTES and max_record_bytes > 0
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.durable = durable
        self.max_record_bytes = max_record_bytes
        self.verify_sealed = verify_sealed
        self.checkpoint_bytes = CHECKPOINT_BYTES if checkpoint_bytes is None else checkpoint_bytes
        self._ckpt_count = 0  #: entries of the active segment its .idx chunks describe
        self._ckpt_end = 0  #: bytes of the active segment those entries span
        self._segs: list[Segment] = []
        self._bases: list[int] = []
        self._terms: array[int] = array("q")
        self._first = 1
        self._boundary_term = 0  #: term of first-1 while no segment exists
        self._config: list[int] = []
        self._fd = -1  #: the active segment, O_RDWR
        self._active_crc = 0
        self._read_fds: OrderedDict[Path, int] = OrderedDict()
        self._dirty: set[int] = set()
        self._deleter = _Deleter(directory, durable)
        self._syncer = _Syncer()
        self.fsync_us = Histogram()  #: the reactor's own flushes (the syncer has its own)
        self._cache: deque[Entry] = deque()
        self._cache_bytes = 0

    # ------------------------------------------------------------------ reads

    def first_index(self) -> int:
        return self._first

    def last_index(self) -> int:
        return self._first + len(self._terms) - 1

    def prev_term(self) -> int:
        """Term of first_index - 1 (0 for an empty, never compacted log)."""
        return self._segs[0].prev_term if self._segs else self._boundary_term

    def term(self, index: int) -> int:
        k = index - self._first
        if k >= 0:
            if k >= len(self._terms):
                raise Unavailable(index)
            return self._terms[k]
        if k == -1:
            return self.prev_term()
        raise Compacted(index)

    def last_config_index(self) -> int:
        return self._config[-1] if self._config else 0

    def segment_count(self) -> int:
        return len(self._segs)

    def disk_bytes(self) -> int:
        return sum(s.end for s in self._segs)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """[lo, hi): at least one entry, then more while sum(len(data) + 16) <= max_bytes."""
        if lo < self._first:
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi - 1)
        out: list[Entry] = []
        used = 0
        cache_first = self._cache[0].index if self._cache else self.last_index() + 1
        if lo < cache_first:
            used = self._read_disk(lo, min(hi, cache_first), max_bytes, out)
            if len(out) < min(hi, cache_first) - lo:
                return out
            lo = cache_first
        for k in range(lo - cache_first, hi - cache_first):
            e = self._cache[k]
            size = len(e.data) + ENTRY_OVERHEAD_BYTES
            if out and used + size > max_bytes:
                break
            used += size
            out.append(e)
        return out

    def _read_disk(self, lo: int, hi: int, max_bytes: int, out: list[Entry]) -> int:
        used = 0
        while lo < hi:
            seg = self._segs[bisect.bisect_right(self._bases, lo) - 1]
            i, j = lo - seg.base, min(hi, seg.last + 1) - seg.base
            k = i
            while k < j:
                size = seg.record_end(k) - seg.offsets[k] - rec.REC_HDR_BYTES
                size += ENTRY_OVERHEAD_BYTES
                if (out or k > i) and used + size > max_bytes:
                    break
                used += size
                k += 1
            start = seg.offsets[i]
            buf = pread_exact(self._read_fd(seg), seg.record_end(k - 1) - start, start)
            for n in range(i, k):
                e = rec.decode_record_at(buf, seg.offsets[n] - start, seg.path)
                if e.index != seg.base + n:
                    raise CorruptLog(
                        f"{seg.path}: record at offset {seg.offsets[n]} has index {e.index},"
                        f" expected {seg.base + n}",
                        path=str(seg.path),
                        offset=seg.offsets[n],
                    )
                out.append(e)
            if k < j:
                break
            lo = seg.base + j
        return used

    def _read_fd(self, seg: Segment) -> int:
        if seg is self._segs[-1] and self._fd >= 0:
            return self._fd
        fd = self._read_fds.pop(seg.path, -1)
        if fd < 0:
            fd = os.open(seg.path, os.O_RDONLY)
            while len(self._read_fds) >= MAX_READ_FDS:
                os.close(self._read_fds.popitem(last=False)[1])
        self._read_fds[seg.path] = fd
        return fd

    def _forget_fd(self, path: Path) -> None:
        fd = self._read_fds.pop(path, -1)
        if fd >= 0:
            os.close(fd)

    # ------------------------------------------------------------------ writes

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (contiguous); a first index <= last_index replaces the suffix."""
        if not entries:
            return
        first = entries[0].index
        self._validate(entries)
        blobs = [rec.encode_record(e) for e in entries]
        limit = self.max_record_bytes
        if max(map(len, blobs)) > limit:
            for e, blob in zip(entries, blobs, strict=True):
                if len(blob) > limit:
                    raise RecordTooLarge(
                        f"entry {e.index}: record of {len(blob)} bytes exceeds"
                        f" max_record_bytes={limit}"
                    )
        if first <= self.last_index():
            self.truncate_suffix(first)
        if not self._segs:
            self._create_segment(first, self.prev_term())
        self._write_batch(entries, blobs)

    def _validate(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first < self._first or first > self.last_index() + 1:
            raise ValueError(
                f"append at {first} does not fit log [{self._first}, {self.last_index()}]"
            )
        prev = self.term(first - 1) if first - 1 >= self._first - 1 else 0
        for k, e in enumerate(entries):
            if e.index != first + k or e.term < prev or e.term <= 0:
                raise ValueError(f"entries must be contiguous with non-decreasing terms: {e[:3]}")
            prev = e.term

    def _write_batch(self, entries: Sequence[Entry], blobs: list[bytes]) -> None:
        seg = self._segs[-1]
        if seg.end + sum(map(len, blobs)) <= self.segment_bytes:  # the common case: all fit
            self._flush(entries, blobs)
            return
        batch_lo, size = 0, 0
        for n, blob in enumerate(blobs):
            pending = len(seg.offsets) + (n - batch_lo)
            if pending and seg.end + size + len(blob) > self.segment_bytes:
                self._flush(entries[batch_lo:n], blobs[batch_lo:n])
                self._roll(entries[n].index)
                seg, batch_lo, size = self._segs[-1], n, 0
            size += len(blob)
        self._flush(entries[batch_lo:], blobs[batch_lo:])

    def _flush(self, entries: Sequence[Entry], blobs: Sequence[bytes]) -> None:
        """One pwrite of whole records at the active segment's end, then update memory."""
        if not entries:
            return
        seg = self._segs[-1]
        buf = b"".join(blobs)
        size = len(buf)
        view = memoryview(buf)
        written = 0
        while written < size:
            n = os.pwrite(self._fd, view[written:], seg.end + written)
            assert n > 0
            written += n
        self._dirty.add(self._fd)
        self._active_crc = zlib.crc32(buf, self._active_crc)
        offsets = seg.offsets
        off = seg.end
        for blob in blobs:
            offsets.append(off)
            off += len(blob)
        assert off == seg.end + size
        seg.end = off
        self._terms.extend([e.term for e in entries])
        for e in entries:
            if e.type == _CONFIG:
                self._config.append(e.index)
        self._cache_put(entries)

    def _cache_put(self, entries: Sequence[Entry]) -> None:
        cache = self._cache
        assert not cache or cache[-1].index + 1 == entries[0].index, "cache is contiguous"
        cache.extend(entries)
        self._cache_bytes += sum([len(e.data) for e in entries])
        while cache and (len(cache) > CACHE_ENTRIES or self._cache_bytes > CACHE_BYTES):
            self._cache_bytes -= len(cache.popleft().data)

    def sync(self) -> int:
        """fdatasync every file written since the last sync (normally one); returns the count.

        New segment files and deletions were made durable (directory fsync) when they
        happened, so the data files are all that is left.
        """
        self._syncer.pause()
        n = 0
        if self.durable:
            for fd in self._dirty:
                self._timed_fdatasync(fd)
                n += 1
        self._dirty.clear()
        self._syncer.set_durable(self.last_index())
        self._maybe_checkpoint()
        return n

    def sync_begin(self, notify: Callable[[], None]) -> None:
        """Start making every write so far durable; ``notify`` (any thread) when done.

        :meth:`synced_index` says how far it got. A later :meth:`sync` waits for it.
        """
        if self.durable and self._fd >= 0 and self.last_index() > self._syncer.durable():
            self._syncer.notify = notify
            self._syncer.request(self._fd, self.last_index())
        # no checkpoint here: recovery reads one as "synced up to here" (see sync())

    def _timed_fdatasync(self, fd: int) -> None:
        started = time.perf_counter_ns()
        os.fdatasync(fd)
        self.fsync_us.observe((time.perf_counter_ns() - started) // 1000)

    def sync_recovered(self) -> None:
        """fdatasync what recovery found in the active segment (sealed ones were synced).

        A killed process leaves its unsynced writes in the page cache, where the next
        process reads them back as its log. Nothing would sync them later (no append
        touches them), so without this a restarted follower could acknowledge entries
        that a power loss then takes away.
        """
        if self.durable and self._fd >= 0:
            self._timed_fdatasync(self._fd)
            fsync_dir(self.dir)
            self._syncer.set_durable(self.last_index())

    def fsync_histogram(self) -> Histogram:
        """Every flush of appended entries so far (batch syncs, segment seals, the helper
        thread's flushes), not the rarer ones of headers, cuts and markers (a copy)."""
        out = Histogram()
        out.add(self.fsync_us)
        out.add(self._syncer.fsync_us)
        return out

    def synced_index(self) -> int:
        """The last index known durable (every index when fsync is off)."""
        if not self.durable:
            return self.last_index()
        return min(self._syncer.durable(), self.last_index())

    def sync_pending(self) -> bool:
        """A flush :meth:`sync_begin` asked for has not finished."""
        return self._syncer.pending()

    def _maybe_checkpoint(self) -> None:
        # only after a sync: recovery takes a checkpoint's size as a synced watermark
        if self._segs and self._segs[-1].end - self._ckpt_end >= self.checkpoint_bytes:
            self._append_checkpoint(self._segs[-1])

    def _roll(self, base: int) -> None:
        """Seal the active segment (fsync + index sidecar) and start a new one at ``base``.

        The sealed segment is made durable before anything lands in the next one, so
        after a power loss only the newest segment can hold a torn write.
        """
        old = self._segs[-1]
        self._syncer.pause()
        if self.durable:
            self._timed_fdatasync(self._fd)
        self._dirty.discard(self._fd)
        self._syncer.set_durable(self.last_index())
        self._append_checkpoint(old)
        self._close_active()
        self._create_segment(base, self._terms[-1])

    def _append_checkpoint(self, seg: Segment) -> None:
        """Append an index chunk for the active segment's entries not yet in its .idx.

        Not fsynced and optional: on any error the file is dropped and rebuilt later.
        """
        done, count = self._ckpt_count, len(seg.offsets)
        if done == count and self._ckpt_end == seg.end:
            return
        lo = seg.base - self._first
        types = bytearray(count - done)
        for index in self._config[bisect.bisect_left(self._config, seg.base + done) :]:
            types[index - seg.base - done] = _CONFIG
        chunk = rec.encode_index_chunk(
            seg.base,
            done,
            seg.offsets[done:],
            self._terms[lo + done : lo + count],
            bytes(types),
            seg.end,
            self._active_crc,
        )
        path = _idx_path(seg.path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if done else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o644)
            try:
                write_all(fd, chunk)
            finally:
                os.close(fd)
        except OSError:
            _unlink_quiet(path)
            self._ckpt_count = self._ckpt_end = 0
            return
        self._ckpt_count, self._ckpt_end = count, seg.end

    def set_checkpoint(self, count: int, end: int) -> None:
        """Recovery tells how much of the active segment its .idx already describes."""
        assert 0 <= count <= len(self._segs[-1].offsets)
        self._ckpt_count, self._ckpt_end = count, end

    def _create_segment(self, base: int, prev_term: int) -> None:
        path = self.dir / rec.segment_name(base)
        self._forget_fd(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = rec.encode_segment_header(base, prev_term)
            write_all(fd, header)
            if self.durable:
                os.fdatasync(fd)
                fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            raise
        assert self._fd < 0
        self._fd = fd
        self._active_crc = zlib.crc32(header)
        self._ckpt_count = self._ckpt_end = 0
        if not self._segs:
            self._first = base
            self._terms = array("q")
        assert base == self.last_index() + 1
        self._segs.append(Segment(path, base, prev_term))
        self._bases.append(base)

    def truncate_suffix(self, index: int) -> None:
        """Drop entries >= index. Crossing into a sealed segment goes through a durable marker."""
        assert self._first <= index <= self.last_index()
        self._deleter.drain()
        self._syncer.pause()
        self._syncer.set_durable(min(self._syncer.durable(), index - 1))
        k = bisect.bisect_right(self._bases, index) - 1
        seg = self._segs[k]
        cut = seg.offsets[index - seg.base]
        if k == len(self._segs) - 1:
            _unlink_quiet(_idx_path(seg.path))  # a checkpoint past the cut is stale, and
            if self.durable:  # must be gone for good first: recovery refuses a tail
                fsync_dir(self.dir)  # shorter than its checkpoint says was synced
            self._ckpt_count = self._ckpt_end = 0
            os.ftruncate(self._fd, cut)
            if self.durable:  # the cut first: after a power loss, stale records must not
                os.fdatasync(self._fd)  # reappear behind new ones and look like damage,
                fsync_dir(self.dir)  # nor a stale checkpoint claim them synced
            self._dirty.add(self._fd)
            self._active_crc = zlib.crc32(pread_exact(self._fd, cut, 0))
        else:
            self._truncate_across(k, index, cut)
        del seg.offsets[index - seg.base :]
        seg.end = cut
        del self._terms[index - self._first :]
        while self._config and self._config[-1] >= index:
            self._config.pop()
        while self._cache and self._cache[-1].index >= index:
            self._cache_bytes -= len(self._cache.pop().data)

    def _truncate_across(self, k: int, index: int, cut: int) -> None:
        seg = self._segs[k]
        write_marker(self.dir, index, durable=self.durable)
        for later in reversed(self._segs[k + 1 :]):
            self._drop_segment_file(later)
        self._close_active()
        del self._segs[k + 1 :], self._bases[k + 1 :]
        _unlink_quiet(_idx_path(seg.path))
        self._forget_fd(seg.path)
        self._fd = os.open(seg.path, os.O_RDWR)
        self._ckpt_count = self._ckpt_end = 0
        os.ftruncate(self._fd, cut)
        self._active_crc = zlib.crc32(pread_exact(self._fd, cut, 0))
        if self.durable:
            os.fdatasync(self._fd)
            fsync_dir(self.dir)
        _unlink_quiet(self.dir / TRUNCATE_MARKER)
        if self.durable:
            fsync_dir(self.dir)

    def _close_active(self) -> None:
        """Forget the active fd before closing it: a failed close must not leave it twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._dirty.discard(fd)
            os.close(fd)

    def _drop_segment_file(self, seg: Segment) -> None:
        self._forget_fd(seg.path)
        _unlink_quiet(_idx_path(seg.path))
        _unlink_quiet(seg.path)

    def compact(self, index: int) -> int:
        """Delete whole segments whose entries are all <= index (never the active one).

        Oldest first, so a crash part way leaves a contiguous suffix. Returns how many.
        """
        gone: list[Path] = []
        while len(self._segs) > 1 and self._segs[0].last <= index:
            seg = self._segs[0]
            self._forget_fd(seg.path)
            gone.append(seg.path)
            count = len(seg.offsets)
            del self._segs[0], self._bases[0]
            del self._terms[:count]
            self._first = self._segs[0].base
        while self._config and self._config[0] < self._first:
            self._config.pop(0)
        if gone:  # the files go on a helper thread; until then they are harmless history
            self._deleter.submit(gone)
        return len(gone)

    def wait_deletions(self) -> None:
        """Block until compacted segment files are gone (tests; close does it too)."""
        self._deleter.drain()

    def reset(self, index: int, term: int) -> None:
        """Restart the log after a snapshot at (index, term): keep it only if it agrees there."""
        if self._first - 1 <= index <= self.last_index() and self.term(index) == term:
            self.compact(index)
            return
        self._deleter.drain()
        self._syncer.pause()
        self._syncer.set_durable(0)
        self._close_active()
        for seg in reversed(self._segs):
            self._drop_segment_file(seg)
        if self.durable and self._segs:
            fsync_dir(self.dir)
        self._segs, self._bases, self._config = [], [], []
        self._terms = array("q")
        self._cache.clear()
        self._cache_bytes = 0
        self._first, self._boundary_term = index + 1, term
        self._create_segment(index + 1, term)

    def set_empty_boundary(self, index: int, term: int) -> None:
        """For a log with no segments: it starts after (index, term) (a snapshot)."""
        assert not self._segs
        self._first, self._boundary_term = index + 1, term

    def install(
        self, segs: list[Segment], terms: array[int], config: list[int], active_crc: int
    ) -> None:
        """Adopt the state recovery rebuilt from disk; the last segment becomes active."""
        assert not self._segs and segs
        for a, b in itertools.pairwise(segs):
            assert b.base == a.last + 1, "recovery hands over a chained log"
        self._segs, self._bases = segs, [s.base for s in segs]
        self._terms, self._config = terms, config
        self._first = segs[0].base
        assert len(terms) == segs[-1].last - self._first + 1
        self._fd = os.open(segs[-1].path, os.O_RDWR)
        self._active_crc = active_crc

    def cut_unflushed(self) -> None:
        """After a failed flush: cut the active segment back to what is known durable.

        The kernel may have dropped the failed pages' writes while its page cache still
        shows them (marked clean, Linux >= 4.13): a reopened log would read them back and
        a later fsync would succeed without writing them. So they go. Memory is not
        trimmed: the storage is failed, and recover_writes or a reopen rebuilds it."""
        if not self.durable or not self._segs or self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self._syncer.pause()
        active = self._segs[-1]
        durable = self._syncer.flushed()
        if durable < active.last:
            os.ftruncate(self._fd, active.offsets[max(durable + 1, active.base) - active.base])

    def rollback_unrecorded(self) -> None:
        """Remove bytes and segment files a failed write left beyond what memory records.

        After an error the caller was told the write failed; cutting its partial
        leftovers keeps the log equal to what the caller believes it holds.
        """
        if not self._segs:
            return
        with contextlib.suppress(OSError):
            self._syncer.pause()
        active = self._segs[-1]
        for name in os.listdir(self.dir):
            base = rec.parse_segment_name(name)
            if base is not None and base > active.base:
                self._drop_segment_file(Segment(self.dir / name, base, 0))
        self.cut_unflushed()
        if self._fd >= 0 and os.fstat(self._fd).st_size > active.end:
            os.ftruncate(self._fd, active.end)
        if self.durable and self._fd >= 0:
            os.fdatasync(self._fd)

    def close(self) -> None:
        """Release every fd even when a helper thread's failure is raised from here."""
        try:
            try:
                self._syncer.close()
            finally:
                self._deleter.close()
        finally:
            fds, self._fd = [*self._read_fds.values(), self._fd], -1
            self._read_fds.clear()
            self._dirty.clear()
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)


def _idx_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(".idx")


DELETE_CHUNK_BYTES = 4 << 20  #: a compacted segment shrinks by this much at a time
DELETE_PAUSE_S = 0.002  #: between chunks: other fsyncs on the disk go first


def _shrink_gradually(fd: int) -> None:
    """Free an unlinked file's blocks a few MiB at a time (the last ones go on close).

    Freeing 64 MiB of extents at once made the journal commit that every node's next
    fdatasync waits for 20-30 ms long on our bench disk (the same trick as RocksDB's
    chunked deletes). Runs on the deleter thread, never on the reactor.
    """
    size = os.fstat(fd).st_size
    while size > DELETE_CHUNK_BYTES:
        size -= DELETE_CHUNK_BYTES
        os.ftruncate(fd, size)
        time.sleep(DELETE_PAUSE_S)  # pacing I/O on a helper thread, not synchronisation


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_marker(directory: Path, index: int, *, durable: bool) -> None:
    head = _MARKER.pack(_MARKER_MAGIC, index, 0)[:-4]
    atomic_write(
        directory / TRUNCATE_MARKER, head + struct.pack("<I", zlib.crc32(head)), durable=durable
    )


def read_marker(directory: Path) -> int | None:
    """The pending truncation point, or None; a garbled marker is corruption."""
    path = directory / TRUNCATE_MARKER
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _MARKER.size or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptLog(f"{path}: truncation marker fails its checksum", path=str(path), offset=0)
    magic, index, _ = _MARKER.unpack(data)
    if magic != _MARKER_MAGIC:
        raise CorruptLog(f"{path}: bad truncation marker magic", path=str(path), offset=0)
    return int(index)
