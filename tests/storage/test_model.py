"""The disk log against an in-memory model through random operation sequences."""

from __future__ import annotations

import shutil
import tempfile
import zlib
from pathlib import Path

from conftest import all_entries, payload
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zraft.core.types import Entry, EntryType, Membership, SnapshotMeta
from zraft.storage import Storage

TYPES = [EntryType.NORMAL, EntryType.NORMAL, EntryType.NOOP, EntryType.CONFIG]


class LogModel(RuleBasedStateMachine):
    """Model: first index + list of entries; the storage must always agree with it."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zraft-model-"))
        self.seg_bytes = 200
        self.st = Storage.open(self.dir, segment_bytes=self.seg_bytes, fsync="never")
        self.first = 1
        self.log: list[Entry] = []
        self.term = 1
        self.prev_term = 0  #: term of first - 1
        self.snap_index = 0

    def teardown(self) -> None:
        self.st.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def last(self) -> int:
        return self.first + len(self.log) - 1

    def term_at(self, index: int) -> int:
        return self.prev_term if index == self.first - 1 else self.log[index - self.first].term

    def drop_prefix(self, new_first: int) -> None:
        if new_first > self.first:
            self.prev_term = self.term_at(new_first - 1)
            del self.log[: new_first - self.first]
            self.first = new_first

    def make(self, lo: int, n: int, types: list[int], sizes: list[int]) -> list[Entry]:
        out = []
        for k in range(n):
            typ = TYPES[types[k % len(types)]]
            data = (payload(self.term, lo + k) * 3)[: sizes[k % len(sizes)]]
            out.append(Entry(self.term, lo + k, typ, data))
        return out

    @rule(
        n=st.integers(1, 12),
        types=st.lists(st.integers(0, 3), min_size=1, max_size=4),
        sizes=st.lists(st.integers(0, 120), min_size=1, max_size=4),
        bump=st.booleans(),
    )
    def append(self, n: int, types: list[int], sizes: list[int], bump: bool) -> None:
        self.term += int(bump)
        batch = self.make(self.last() + 1, n, types, sizes)
        self.st.append(batch)
        self.log.extend(batch)

    @precondition(lambda self: self.last() > self.snap_index and self.log)
    @rule(back=st.integers(0, 40), n=st.integers(1, 6))
    def truncating_append(self, back: int, n: int) -> None:
        self.term += 1
        at = max(self.first, self.snap_index + 1, self.last() - back)
        batch = self.make(at, n, [0], [17, 60])
        self.st.append(batch)
        del self.log[at - self.first :]
        self.log.extend(batch)

    @rule(ahead=st.integers(0, 60))
    def compact(self, ahead: int) -> None:
        index = self.first + ahead
        old_first = self.first
        self.st.compact(index)
        new_first = self.st.first_index()
        assert old_first <= new_first <= max(old_first, min(index, self.last()) + 1)
        self.drop_prefix(new_first)

    @rule(ahead=st.integers(0, 50), agree=st.booleans())
    def install_snapshot(self, ahead: int, agree: bool) -> None:
        index = max(self.snap_index, self.first - 1 + ahead)
        agree = agree and index <= self.last()
        if not agree:
            self.term += 1
        term = self.term_at(index) if agree else self.term
        meta = SnapshotMeta(index, term, Membership(), 3, zlib.crc32(b"abc"))
        self.st.stage_snapshot_chunk(meta, 0, b"abc")
        assert self.st.finish_staged_snapshot(meta)
        self.st.restart_log_after(meta)
        self.snap_index = index
        if agree:
            self.drop_prefix(self.st.first_index())
        else:
            self.first, self.log, self.prev_term = index + 1, [], term
        assert self.st.term(index) == term

    @rule()
    def sync(self) -> None:
        self.st.sync()

    @rule()
    def reopen(self) -> None:
        self.st.close()
        self.st = Storage.open(self.dir, segment_bytes=self.seg_bytes, fsync="never")

    @invariant()
    def agrees(self) -> None:
        assert self.st.first_index() == self.first
        assert self.st.last_index() == self.last()
        assert self.st.term(self.first - 1) == self.prev_term
        assert all_entries(self.st) == self.log
        for e in self.log[-3:]:
            assert self.st.term(e.index) == e.term
        if self.log:
            mid = self.log[len(self.log) // 2]
            assert self.st.entries(mid.index, mid.index + 1, 0) == [mid]


LogModel.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogModel = LogModel.TestCase
