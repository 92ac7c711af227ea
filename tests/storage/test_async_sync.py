"""A leader's flush on the helper thread: sync_begin, synced_index, and what waits for it.

Every wait here is on an event the code under test sets, with a generous timeout
that only bounds a failure; nothing sleeps to let the other thread run.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import all_entries, ents

from zraft.storage import Storage, StorageFailed

WAIT_S = 10.0  #: bounds a hang; a passing run never waits this long


class GatedFlush:
    """Replaces os.fdatasync: helper-thread flushes wait for ``release``; others pass."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: list[str] = []
        self.error: OSError | None = None

    def __call__(self, fd: int) -> None:
        name = threading.current_thread().name
        self.threads.append(name)
        if name == "zraft-fsync":
            self.entered.set()
            assert self.release.wait(WAIT_S), "test never released the flush"
            if self.error is not None:
                raise self.error
        self.real(fd)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> GatedFlush:
    g = GatedFlush(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", g)
    return g


def test_sync_begin_returns_at_once_and_reports_the_flush(data_dir: Path, gate: GatedFlush) -> None:
    st = Storage.open(data_dir)
    st.append(ents(1, 1, 11))
    st.sync()
    assert st.synced_index() == 10
    st.append(ents(1, 11, 21))
    done = threading.Event()
    st.sync_begin(done.set)  # the flush blocks in the gate: sync_begin must not
    assert gate.entered.wait(WAIT_S)
    assert st.sync_pending() and st.synced_index() == 10, "written, not yet durable"
    assert all_entries(st) == ents(1, 1, 21), "readable before it is durable"
    gate.release.set()
    assert done.wait(WAIT_S), "notify runs when the flush ends"
    assert not st.sync_pending() and st.synced_index() == 20
    assert "zraft-fsync" in gate.threads
    st.close()


def test_sync_waits_for_a_running_flush_then_covers_everything(
    data_dir: Path, gate: GatedFlush
) -> None:
    st = Storage.open(data_dir)
    st.append(ents(1, 1, 11))
    st.sync_begin(lambda: None)
    assert gate.entered.wait(WAIT_S)
    st.append(ents(1, 11, 16))
    finished = threading.Event()

    def sync() -> None:
        st.sync()
        finished.set()

    t = threading.Thread(target=sync)
    t.start()
    assert not finished.wait(0.05), "sync() must not overtake the running flush"
    gate.release.set()
    t.join(WAIT_S)
    assert finished.is_set() and st.synced_index() == 15 and not st.sync_pending()
    st.close()


def test_a_truncated_suffix_is_no_longer_reported_durable(data_dir: Path) -> None:
    st = Storage.open(data_dir)
    st.append(ents(1, 1, 21))
    done = threading.Event()
    st.sync_begin(done.set)
    assert done.wait(WAIT_S) and st.synced_index() == 20
    st.append(ents(2, 15, 17))  # replaces 15..20: the new 15, 16 are only written
    assert st.synced_index() == 14
    st.sync()
    assert st.synced_index() == 16
    st.close()
    with Storage.open(data_dir) as st:
        assert all_entries(st) == ents(1, 1, 15) + ents(2, 15, 17)


def test_a_failed_flush_fails_the_storage(data_dir: Path, gate: GatedFlush) -> None:
    st = Storage.open(data_dir)
    st.append(ents(1, 1, 6))
    st.sync()
    st.append(ents(1, 6, 9))
    done = threading.Event()
    gate.error = OSError(errno.EIO, os.strerror(errno.EIO))
    gate.release.set()
    st.sync_begin(done.set)
    assert done.wait(WAIT_S)
    with pytest.raises(StorageFailed, match="Input/output error"):
        st.synced_index()
    assert st.failed is not None
    with pytest.raises(StorageFailed):
        st.append(ents(1, 9, 10))
    st.close()


def test_close_with_a_flush_running_waits_for_it(data_dir: Path, gate: GatedFlush) -> None:
    st = Storage.open(data_dir, segment_bytes=4096)
    st.append(ents(1, 1, 11))
    st.sync_begin(lambda: None)
    assert gate.entered.wait(WAIT_S)
    closed = threading.Event()
    t = threading.Thread(target=lambda: (st.close(), closed.set()))
    t.start()
    assert not closed.wait(0.05), "the fd stays open while the helper flushes it"
    gate.release.set()
    t.join(WAIT_S)
    assert closed.is_set()
    with Storage.open(data_dir, segment_bytes=4096) as st:
        assert all_entries(st) == ents(1, 1, 11)


def test_rolling_a_segment_waits_for_the_flush_of_the_old_one(
    data_dir: Path, gate: GatedFlush
) -> None:
    st = Storage.open(data_dir, segment_bytes=4096)
    st.append(ents(1, 1, 11))
    st.sync_begin(lambda: None)
    assert gate.entered.wait(WAIT_S)
    rolled = threading.Event()

    def roll() -> None:
        st.append(ents(1, 11, 200))  # crosses into new segments: closes the flushed fd
        rolled.set()

    t = threading.Thread(target=roll)
    t.start()
    assert not rolled.wait(0.05), "the active fd is not closed under a running flush"
    gate.release.set()
    t.join(WAIT_S)
    assert rolled.is_set() and st.segment_count() > 1
    assert st.synced_index() >= 10, "sealing flushed what the old segment held"
    st.sync()
    assert st.synced_index() == 199
    st.close()


def test_every_log_flush_is_timed_whichever_thread_runs_it(data_dir: Path) -> None:
    st = Storage.open(data_dir)
    st.append(ents(1, 1, 5))
    st.sync()
    assert st.fsync_histogram().count() == 1
    st.append(ents(1, 5, 9))
    done = threading.Event()
    st.sync_begin(done.set)
    assert done.wait(WAIT_S)
    h = st.fsync_histogram()
    assert h.count() == 2 and h.max >= 0
    st.close()
    with Storage.open(data_dir, fsync="never") as lazy:
        lazy.append(ents(1, 9, 12))
        lazy.sync()
        assert lazy.fsync_histogram().count() == 0, "no fsync, nothing timed"
