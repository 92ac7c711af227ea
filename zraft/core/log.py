"""The core's view of the log: durable entries (storage) plus an unstable tail.

Entries the core appended but the driver has not yet persisted live in a plain
list (``unstable``) starting at ``offset``; everything below ``offset`` is read
from storage. Entries are kept as the :class:`Entry` tuples they arrived as:
no copies per entry.
"""

from __future__ import annotations

from collections.abc import Sequence

from zraft.core.types import Compacted, Entry, LogStorage, SnapshotMeta, Unavailable

#: Per-entry framing estimate used when bounding a batch by bytes.
ENTRY_OVERHEAD_BYTES = 16


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD_BYTES


class RaftLog:
    """Storage plus unstable entries plus a snapshot not yet durable."""

    __slots__ = ("handed", "offset", "snapshot", "snapshot_handed", "storage", "unstable")

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        #: index of unstable[0] (one past the last durable entry)
        self.offset = storage.last_index() + 1
        #: first unstable index not yet handed out in a Ready
        self.handed = self.offset
        #: a snapshot the core installed that the driver has not yet made durable
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_handed = False

    # ----------------------------------------------------------------- reads
    def last_index(self) -> int:
        return self.offset - 1 + len(self.unstable)

    def first_index(self) -> int:
        if self.snapshot is not None:
            return self.snapshot.index + 1
        return self.storage.first_index()

    def stable_index(self) -> int:
        """Last index known durable (or being made durable by a handed-out Ready)."""
        return self.offset - 1

    def term(self, index: int) -> int | None:
        """Term at ``index``, or None if compacted away or past the end."""
        if index >= self.offset:
            j = index - self.offset
            return self.unstable[j].term if j < len(self.unstable) else None
        if self.snapshot is not None:
            return self.snapshot.term if index == self.snapshot.index else None
        if index < 0:
            return None
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None, "the last entry's term is always known"
        return t

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi): at least one if lo < hi, then up to max_bytes.

        Raises Compacted if ``lo`` is below the first available index.
        """
        if lo >= hi:
            return []
        assert hi <= self.last_index() + 1, "read past the end of the log"
        if lo < self.first_index():
            raise Compacted(lo)
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if hi <= self.offset or not out or out[-1].index + 1 < self.offset:
                return out
            max_bytes -= sum(entry_size(e) for e in out)
            if max_bytes <= 0:
                return out
        start = max(lo, self.offset) - self.offset
        stop = hi - self.offset
        size = 0
        for e in self.unstable[start:stop]:
            size += entry_size(e)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    # ----------------------------------------------------------------- writes
    def append(self, ents: Sequence[Entry]) -> None:
        """Append entries whose first index is <= last+1, replacing any suffix."""
        if not ents:
            return
        first = ents[0].index
        assert first <= self.last_index() + 1, "gap in the log"
        end = self.offset + len(self.unstable)
        if first == end:
            self.unstable.extend(ents)
        elif first <= self.offset:
            self.unstable = list(ents)
            self.offset = first
        else:
            del self.unstable[first - self.offset :]
            self.unstable.extend(ents)
        self.handed = min(self.handed, first)

    def take_unhanded(self) -> list[Entry]:
        """Unstable entries not yet given to a Ready, each exactly once."""
        start = max(self.handed, self.offset)
        ents = self.unstable[start - self.offset :]
        self.handed = self.last_index() + 1
        return ents

    def has_unhanded(self) -> bool:
        return max(self.handed, self.offset) <= self.last_index()

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``index`` (if still the same entry)."""
        if index < self.offset or self.term(index) != term:
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1
        self.handed = max(self.handed, self.offset)

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot (made durable via Ready.snapshot)."""
        self.unstable = []
        self.offset = meta.index + 1
        self.handed = self.offset
        self.snapshot = meta
        self.snapshot_handed = False

    def snapshot_persisted(self, meta: SnapshotMeta) -> None:
        if self.snapshot is meta:
            self.snapshot = None
            self.snapshot_handed = False
