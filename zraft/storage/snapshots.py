"""Snapshot files: state bytes followed by their metadata and a checksummed trailer.

Layout: ``data | meta json | meta_len u32 | meta_crc32 u32 | magic 8``. The data
starts at offset 0 so a chunk for a follower is a plain pread, and the writer can
stream chunks without knowing the size up front. Snapshots are ordered by
(term, index) read from the metadata, never by file name.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from zraft.core.types import Compacted, Membership, SnapshotMeta
from zraft.storage.errors import CorruptSnapshot
from zraft.storage.fileutil import fsync_dir, pread_exact, write_all

log = structlog.get_logger("zraft.storage")

_TRAILER = struct.Struct("<II8s")
_MAGIC = b"ZRSNAP01"
MAX_META_BYTES = 1 << 20
_VERIFY_CHUNK = 1 << 20
MAX_SENT_CRCS = 1 << 16  #: chunk boundaries remembered for checking snapshots as sent


def _name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.term:020d}-{meta.index:020d}.snap"


def _order(meta: SnapshotMeta) -> tuple[int, int]:
    return (meta.term, meta.index)


def encode_meta(meta: SnapshotMeta) -> bytes:
    body = {
        "index": meta.index,
        "term": meta.term,
        "membership": json.loads(meta.membership.encode()),
        "size": meta.size,
        "crc32": meta.crc32,
    }
    raw = json.dumps(body, sort_keys=True).encode()
    return raw + _TRAILER.pack(len(raw), zlib.crc32(raw), _MAGIC)


def read_meta(path: Path) -> SnapshotMeta:
    """Parse the trailer and metadata (not the data); raise CorruptSnapshot if damaged."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _TRAILER.size:
            raise CorruptSnapshot(f"{path}: too short for a snapshot", path=str(path), offset=0)
        tail = pread_exact(f.fileno(), _TRAILER.size, size - _TRAILER.size)
        meta_len, meta_crc, magic = _TRAILER.unpack(tail)
        at = size - _TRAILER.size - meta_len
        if magic != _MAGIC or meta_len > MAX_META_BYTES or at < 0:
            raise CorruptSnapshot(f"{path}: bad trailer", path=str(path), offset=size)
        raw = pread_exact(f.fileno(), meta_len, at)
    if zlib.crc32(raw) != meta_crc:
        raise CorruptSnapshot(f"{path}: metadata fails its checksum", path=str(path), offset=at)
    try:
        d = json.loads(raw)
        meta = SnapshotMeta(
            index=int(d["index"]),
            term=int(d["term"]),
            membership=Membership.decode(json.dumps(d["membership"]).encode()),
            size=int(d["size"]),
            crc32=int(d["crc32"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptSnapshot(f"{path}: metadata does not parse: {err}", path=str(path)) from err
    if meta.size != at:
        raise CorruptSnapshot(
            f"{path}: data is {at} bytes, metadata says {meta.size}", path=str(path), offset=at
        )
    return meta


def verify_data(path: Path, meta: SnapshotMeta) -> None:
    """Check size and crc32 of the data part (a full read)."""
    crc, total = 0, 0
    with open(path, "rb") as f:
        while total < meta.size:
            chunk = f.read(min(_VERIFY_CHUNK, meta.size - total))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            total += len(chunk)
    if total != meta.size or crc != meta.crc32:
        raise CorruptSnapshot(
            f"{path}: data fails its checksum (size {total}/{meta.size})", path=str(path), offset=0
        )


class SnapshotStore:
    """The snapshot directory; safe for one writer thread beside the reactor thread."""

    def __init__(self, directory: Path, *, keep: int, durable: bool) -> None:
        assert keep >= 1
        self.dir = directory
        self.keep = keep
        self.durable = durable
        self._lock = threading.Lock()
        self._metas: list[SnapshotMeta] = []  #: newest first, by (term, index)
        self._staged: SnapshotMeta | None = None
        self._staged_size = 0
        #: (index, crc32, offset) -> CRC of bytes [0, offset) of a snapshot being sent;
        #: reactor thread only (see _check_as_sent)
        self._sent_crcs: dict[tuple[int, int, int], int] = {}
        self.corrupt_found = 0  #: snapshots set aside while running (their file rotted)
        self.dir.mkdir(exist_ok=True)
        self._load()

    def _load(self) -> None:
        candidates: list[SnapshotMeta] = []
        for name in sorted(os.listdir(self.dir)):
            path = self.dir / name
            if name.endswith((".tmp", ".part")):
                os.unlink(path)
            elif name.endswith(".snap"):
                try:
                    meta = read_meta(path)
                    if name != _name(meta):
                        raise CorruptSnapshot(
                            f"{path}: name does not match its metadata ({_name(meta)})",
                            path=str(path),
                        )
                    candidates.append(meta)
                except CorruptSnapshot as err:
                    self._set_aside(path, err)
        candidates.sort(key=_order, reverse=True)
        while candidates:
            path = self.dir / _name(candidates[0])
            try:
                verify_data(path, candidates[0])
                break
            except CorruptSnapshot as err:
                self._set_aside(path, err)
                candidates.pop(0)
        self._metas = candidates
        if candidates:
            m = candidates[0]
            log.info("storage_snapshot_restored", index=m.index, term=m.term, file=_name(m))

    def _set_aside(self, path: Path, err: CorruptSnapshot) -> None:
        """Rename a bad snapshot to ``.corrupt`` (kept for forensics, never loaded)."""
        log.warning("storage_snapshot_invalid", file=str(path), reason=str(err))
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))

    def newest(self) -> SnapshotMeta | None:
        with self._lock:
            return self._metas[0] if self._metas else None

    def oldest(self) -> SnapshotMeta | None:
        """The oldest retained snapshot: the log is kept back to it so it can be a fallback."""
        with self._lock:
            return self._metas[-1] if self._metas else None

    def count(self) -> int:
        with self._lock:
            return len(self._metas)

    def disk_bytes(self) -> int:
        with self._lock:
            return sum(m.size for m in self._metas)

    def write(
        self, index: int, term: int, membership: Membership, chunks: Iterable[bytes]
    ) -> SnapshotMeta:
        """Stream ``chunks`` into a new snapshot file and publish it once durable."""
        tmp = self.dir / f".{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            crc, size = 0, 0
            for chunk in chunks:
                write_all(fd, chunk)
                crc, size = zlib.crc32(chunk, crc), size + len(chunk)
            meta = SnapshotMeta(index, term, membership, size, crc)
            write_all(fd, encode_meta(meta))
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        self._publish(tmp, meta)
        return meta

    def _publish(self, tmp: Path, meta: SnapshotMeta) -> None:
        os.replace(tmp, self.dir / _name(meta))
        if self.durable:
            fsync_dir(self.dir)
        with self._lock:
            self._metas = [m for m in self._metas if _order(m) != _order(meta)]
            self._metas.append(meta)
            self._metas.sort(key=_order, reverse=True)
            pruned, self._metas = self._metas[self.keep :], self._metas[: self.keep]
        for old in pruned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / _name(old))
        log.info("storage_snapshot_written", index=meta.index, term=meta.term, size=meta.size)

    def _path_for_index(self, index: int) -> tuple[Path, SnapshotMeta]:
        with self._lock:
            for m in self._metas:
                if m.index == index:
                    return self.dir / _name(m), m
        raise Compacted(f"no snapshot at index {index} (pruned or never written)")

    def chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        path, meta = self._path_for_index(index)
        if not 0 <= offset <= meta.size or max_bytes <= 0:
            raise ValueError(f"bad snapshot range offset={offset} max_bytes={max_bytes}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise Compacted(f"snapshot at index {index} was pruned") from None
        try:
            data = pread_exact(fd, min(max_bytes, meta.size - offset), offset)
        finally:
            os.close(fd)
        self._check_as_sent(path, meta, offset, data)
        return data

    def _check_as_sent(self, path: Path, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        """A leader sends its snapshot from offset 0 up, in order: checking the CRC as it
        goes catches a file that rotted on disk, which followers would otherwise reject
        copy after copy, forever. A bad one is set aside (Compacted: send another)."""
        key = (meta.index, meta.crc32)  # a replacement at the same index has another CRC
        if offset == 0:
            crc = 0
            live = {(m.index, m.crc32) for m in self._metas}
            self._sent_crcs = {k: v for k, v in self._sent_crcs.items() if k[:2] in live}
        elif (crc_so_far := self._sent_crcs.get((*key, offset))) is not None:
            crc = crc_so_far
        else:
            return  # a transfer resumed mid-file: it cannot be checked on the way
        crc = zlib.crc32(data, crc)
        end = offset + len(data)
        if end < meta.size:
            if len(self._sent_crcs) < MAX_SENT_CRCS:
                self._sent_crcs[(*key, end)] = crc
            return
        if crc == meta.crc32:
            return
        with self._lock:
            self._metas = [m for m in self._metas if _order(m) != _order(meta)]
        self._set_aside(path, CorruptSnapshot(f"{path}: data fails its checksum", path=str(path)))
        self._sent_crcs = {k: v for k, v in self._sent_crcs.items() if k[:2] != key}
        self.corrupt_found += 1
        raise Compacted(f"snapshot at index {meta.index} failed its checksum: set aside")

    def read(self, meta: SnapshotMeta, chunk_bytes: int) -> Iterator[bytes]:
        """Yield the data; raise CorruptSnapshot at the end if size/crc do not match."""
        assert chunk_bytes > 0
        path = self.dir / _name(meta)
        crc, total = 0, 0
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise Compacted(f"snapshot at index {meta.index} was pruned") from None
        with f:
            while total < meta.size:
                chunk = f.read(min(chunk_bytes, meta.size - total))
                if not chunk:
                    break
                crc, total = zlib.crc32(chunk, crc), total + len(chunk)
                yield chunk
        if total != meta.size or crc != meta.crc32:
            raise CorruptSnapshot(f"{path}: data fails its checksum", path=str(path), offset=0)

    # ------------------------------------------------------------- follower staging

    def _staging_path(self, meta: SnapshotMeta) -> Path:
        return self.dir / f"staging-{meta.term:020d}-{meta.index:020d}.part"

    def stage(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        """Write a received chunk; offset 0 or a different meta restarts the staging file."""
        if offset + len(data) > meta.size:
            raise ValueError(f"chunk [{offset}, {offset + len(data)}) beyond size {meta.size}")
        if self._staged != meta or offset == 0:
            self.discard_staged()
            fd = os.open(self._staging_path(meta), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.close(fd)
            self._staged, self._staged_size = meta, 0
        if offset > self._staged_size:
            raise ValueError(f"chunk at {offset} leaves a gap after {self._staged_size}")
        fd = os.open(self._staging_path(meta), os.O_WRONLY)
        try:
            view, at = memoryview(data), offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n
        finally:
            os.close(fd)
        self._staged_size = max(self._staged_size, offset + len(data))

    def discard_staged(self) -> None:
        if self._staged is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging_path(self._staged))
        self._staged, self._staged_size = None, 0

    def finish_staged(self, meta: SnapshotMeta) -> bool:
        """fsync and verify the staged file; publish it if valid, else delete it."""
        if self._staged != meta:
            self.discard_staged()
            return False
        path = self._staging_path(meta)
        try:
            verify_data(path, meta)
        except CorruptSnapshot as err:
            log.warning("storage_staged_snapshot_rejected", file=str(path), reason=str(err))
            self.discard_staged()
            return False
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.ftruncate(fd, meta.size)
            write_all(fd, encode_meta(meta))
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._staged, self._staged_size = None, 0
        self._publish(path, meta)
        return True
