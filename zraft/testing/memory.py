"""An in-memory LogStorage with the driver-side writes (etcd's MemoryStorage).

Everything written here counts as durable: a simulated crash keeps this object
and throws away the core.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from zraft.core.log import entry_size
from zraft.core.types import (
    Compacted,
    Entry,
    EntryType,
    HardState,
    Membership,
    SnapshotChunk,
    SnapshotMeta,
    Unavailable,
)


class MemoryStorage:
    """Log entries after a snapshot point, hard state, one snapshot, staged chunks."""

    def __init__(self, membership: Membership | None = None) -> None:
        self._bootstrap = membership if membership is not None else Membership()
        self._hs = HardState()
        #: entries[0] is a sentinel at the snapshot point (index, term)
        self._ents: list[Entry] = [Entry(0, 0, EntryType.NOOP, b"")]
        self._snap: SnapshotMeta | None = None
        self._snap_data = b""
        self._staged_key: tuple[int, int] | None = None
        self._staged = bytearray()

    # ------------------------------------------------------------------ LogStorage
    def initial_state(self) -> tuple[HardState, Membership]:
        return self._hs, self.membership_at(self.last_index())

    def bootstrap_membership(self) -> Membership:
        """The membership before any CONFIG entry (lets the core revert exactly)."""
        return self._bootstrap

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[-1].index

    def term(self, index: int) -> int:
        base = self._ents[0].index
        if index < base:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        return self._ents[index - base].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        base = self._ents[0].index
        if lo <= base:
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        out: list[Entry] = []
        size = 0
        for e in self._ents[lo - base : hi - base]:
            size += entry_size(e)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snap

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        if self._snap is None or self._snap.index != index:
            raise Compacted(index)  # replaced by a newer one: it keeps only one
        return self._snap_data[offset : offset + max_bytes]

    # ------------------------------------------------------------------ driver writes
    def membership_at(self, index: int) -> Membership:
        base = self._ents[0].index
        for e in reversed(self._ents[1 : index - base + 1]):
            if e.type == EntryType.CONFIG:
                return Membership.decode(e.data)
        return self._snap.membership if self._snap is not None else self._bootstrap

    def snapshot_data(self) -> bytes:
        return self._snap_data

    def set_hard_state(self, hs: HardState) -> None:
        assert hs.term >= self._hs.term, "term went backwards"
        self._hs = hs

    def append(self, ents: Sequence[Entry]) -> None:
        """Append; an entry at or below the last index replaces that suffix."""
        if not ents:
            return
        base = self._ents[0].index
        first = ents[0].index
        assert base < first <= self.last_index() + 1, "append leaves a gap or hits the snapshot"
        del self._ents[first - base :]
        self._ents.extend(ents)

    def lose_from(self, index: int) -> None:
        """A crash lost every entry from ``index`` on that was written but not flushed."""
        base = self._ents[0].index
        del self._ents[max(index, base + 1) - base :]

    def create_snapshot(self, index: int, data: bytes) -> SnapshotMeta:
        """Snapshot the state machine at ``index`` and compact the log up to it."""
        assert self._ents[0].index < index <= self.last_index(), "snapshot index out of range"
        meta = SnapshotMeta(
            index, self.term(index), self.membership_at(index), len(data), zlib.crc32(data)
        )
        self._snap, self._snap_data = meta, bytes(data)
        self.compact(index)
        return meta

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which must be covered by the snapshot)."""
        base = self._ents[0].index
        assert self._snap is not None and index <= self._snap.index, "compact past snapshot"
        if index <= base:
            return
        keep = self._ents[index - base :]
        self._ents = [Entry(keep[0].term, index, EntryType.NOOP, b""), *keep[1:]]

    def stage_chunk(self, chunk: SnapshotChunk) -> bytes | None:
        """Stage a received chunk; returns the assembled bytes on the final chunk."""
        key = (chunk.meta.index, chunk.meta.term)
        if chunk.offset == 0 or key != self._staged_key:
            self._staged_key = key
            self._staged = bytearray()
        assert chunk.offset == len(self._staged), "chunks arrive in order"
        self._staged += chunk.data
        return bytes(self._staged) if chunk.done else None

    def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the log by a received snapshot."""
        self._snap, self._snap_data = meta, bytes(data)
        self._ents = [Entry(meta.term, meta.index, EntryType.NOOP, b"")]
        self._staged_key = None
        self._staged = bytearray()

    def staged_bytes(self, meta: SnapshotMeta) -> bytes | None:
        if self._staged_key != (meta.index, meta.term):
            return None
        return bytes(self._staged)
