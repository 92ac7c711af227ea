"""Round trips, segment rolls, truncation, compaction, limits and hard state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import all_entries, ent, ents

from zraft.core.types import Compacted, Entry, EntryType, HardState, Membership, Unavailable
from zraft.storage import (
    AlreadyBootstrapped,
    DataDirLocked,
    RecordTooLarge,
    Storage,
)

SMALL = {"segment_bytes": 256}


def reopen(st: Storage, **kw: int | str) -> Storage:
    st.close()
    return Storage.open(st.dir, **{**SMALL, **kw})  # type: ignore[arg-type]


def test_empty_log_sentinels(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        assert st.is_empty()
        assert (st.first_index(), st.last_index(), st.term(0)) == (1, 0, 0)
        assert st.initial_state() == (HardState(), Membership())
        assert st.snapshot_meta() is None
        with pytest.raises(Unavailable):
            st.term(1)
        assert st.entries(1, 1, 100) == []


def test_round_trip_across_segment_rolls_and_reopen(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    batch = [*ents(1, 1, 50), Entry(2, 50, EntryType.NOOP, b""), *ents(2, 51, 120)]
    batch.append(Entry(2, 120, EntryType.CONFIG, b"\x00\xff" * 20))
    st.append(batch[:7])
    st.append(batch[7:])
    st.sync()
    assert st.segment_count() > 5
    assert all_entries(st) == batch
    st = reopen(st)
    assert all_entries(st) == batch
    assert [st.term(i) for i in range(0, 121)] == [0] + [e.term for e in batch]
    assert all(type(e.type) is EntryType for e in all_entries(st))
    st.close()


def test_one_big_append_rolls_wherever_the_next_record_would_overflow(data_dir: Path) -> None:
    """A batch larger than a segment is split across segments, none past its size
    unless it holds a single record (a record never spans two files)."""
    st = Storage.open(data_dir, **SMALL)
    big = Entry(1, 2, EntryType.NORMAL, b"b" * 300)
    batch = [Entry(1, 1, EntryType.NORMAL, b"a" * 40), big, *ents(1, 3, 30)]
    st.append(batch)
    st.sync()
    sizes = sorted(p.stat().st_size for p in data_dir.rglob("*.seg"))
    assert len(sizes) == st.segment_count() > 3
    assert sum(size > SMALL["segment_bytes"] for size in sizes) == 1  # the 300-byte record
    st = reopen(st)
    assert all_entries(st) == batch
    st.close()


def test_reads_hit_disk_after_cache_eviction(data_dir: Path) -> None:
    st = Storage.open(data_dir, segment_bytes=64 << 10)
    big = [Entry(1, i, EntryType.NORMAL, os.urandom(3000)) for i in range(1, 4001)]
    for k in range(0, 4000, 500):
        st.append(big[k : k + 500])
    st.sync()
    assert st.entries(1, 4001, 1 << 40) == big
    assert st.entries(10, 12, 0) == big[9:11][:1]
    st.close()


def test_entries_respects_max_bytes(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append([Entry(1, i, EntryType.NORMAL, b"x" * 10) for i in range(1, 30)])
    # each entry counts len(data) + 16 = 26 bytes, as zraft.core.log.entry_size does
    assert len(st.entries(1, 30, 0)) == 1  # always at least one
    assert len(st.entries(1, 30, 77)) == 2
    assert len(st.entries(1, 30, 78)) == 3
    assert len(st.entries(5, 30, 1000)) == 25
    st = reopen(st)  # the same from disk as from the cache
    assert len(st.entries(1, 30, 77)) == 2
    assert len(st.entries(3, 30, 78)) == 3
    with pytest.raises(Unavailable):
        st.entries(1, 31, 1000)
    st.close()


def test_truncating_append_within_active_segment(data_dir: Path) -> None:
    st = Storage.open(data_dir, segment_bytes=1 << 20)
    st.append(ents(1, 1, 20))
    st.append(ents(2, 15, 18))
    assert st.last_index() == 17
    assert all_entries(st) == ents(1, 1, 15) + ents(2, 15, 18)
    st.sync()
    st = reopen(st, segment_bytes=1 << 20)
    assert all_entries(st) == ents(1, 1, 15) + ents(2, 15, 18)
    st.close()


def test_truncating_append_across_sealed_segments(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 80))
    segs = st.segment_count()
    st.append(ents(3, 10, 12))
    assert st.segment_count() < segs
    assert all_entries(st) == ents(1, 1, 10) + ents(3, 10, 12)
    st.append(ents(3, 12, 40))
    st.sync()
    assert not (data_dir / "log" / "TRUNCATE").exists()
    st = reopen(st)
    assert all_entries(st) == ents(1, 1, 10) + ents(3, 10, 40)
    st.close()


def test_truncate_everything(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 30))
    st.append(ents(2, 1, 3))
    st.sync()
    st = reopen(st)
    assert all_entries(st) == ents(2, 1, 3)
    st.close()


def test_append_rejects_gaps_and_bad_terms(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        st.append(ents(2, 1, 5))
        with pytest.raises(ValueError):
            st.append([ent(2, 7)])
        with pytest.raises(ValueError):
            st.append([ent(1, 5)])  # term goes backwards
        with pytest.raises(ValueError):
            st.append([ent(2, 5), ent(2, 7)])
        assert st.last_index() == 4


def test_record_too_large_writes_nothing(data_dir: Path) -> None:
    with Storage.open(data_dir, max_record_bytes=1000) as st:
        with pytest.raises(RecordTooLarge, match="max_record_bytes=1000"):
            st.append([ent(1, 1), Entry(1, 2, EntryType.NORMAL, b"x" * 1000)])
        assert st.last_index() == 0
        st.append([Entry(1, 1, EntryType.NORMAL, b"x" * 900)])
        assert st.last_index() == 1


def test_a_smaller_limit_at_reopen_keeps_an_intact_larger_record(data_dir: Path) -> None:
    """The limit guards writes; a synced record that checks out is never cut as torn."""
    big = Entry(1, 2, EntryType.NORMAL, b"x" * 5000)
    with Storage.open(data_dir, max_record_bytes=10_000) as st:
        st.append([ent(1, 1), big, ent(1, 3)])
        st.sync()
    with Storage.open(data_dir, max_record_bytes=1000) as st:
        assert all_entries(st) == [ent(1, 1), big, ent(1, 3)]
    with Storage.open(data_dir, max_record_bytes=10_000) as st:
        assert st.last_index() == 3


def test_reopen_makes_a_killed_writers_unsynced_tail_durable(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process leaves unsynced appends in the page cache, and the next open
    reads them as its log. No later append covers them, so the open itself must sync
    them: otherwise a restarted follower acknowledges entries a power loss takes away."""
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 5))  # never synced (the writer died here)
    synced: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    with Storage.open(data_dir, **SMALL) as st:
        active = sorted((data_dir / "log").glob("*.seg"))[-1]
        assert st.last_index() == 4
        assert str(active) in synced  # the recovered tail
        assert str(data_dir) in synced  # a hard state rename whose directory fsync was lost
    synced.clear()
    with Storage.open(data_dir, fsync="never", **SMALL):
        assert synced == []  # never means never


def test_compaction_deletes_whole_segments_only(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 100))
    st.sync()
    before = st.segment_count()
    st.compact(50)
    assert st.first_index() == 1, "no snapshot holds the state before 50: nothing goes"
    st.write_snapshot(50, 1, Membership(), [b"state"])
    st.compact(50)
    first = st.first_index()
    assert 2 <= first <= 51
    assert st.segment_count() < before
    assert st.term(first - 1) == 1
    with pytest.raises(Compacted):
        st.term(first - 2)
    with pytest.raises(Compacted):
        st.entries(first - 1, first + 1, 100)
    assert all_entries(st) == ents(1, first, 100)
    st.write_snapshot(98, 1, Membership(), [b"state"])
    st.write_snapshot(99, 1, Membership(), [b"state"])  # two kept: the one at 50 goes
    st.compact(10_000)  # the active segment always stays
    assert st.last_index() == 99 and st.segment_count() == 1
    st = reopen(st)
    assert st.last_index() == 99 and all_entries(st) == ents(1, st.first_index(), 100)
    st.close()


def test_sync_costs_one_fdatasync(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = Storage.open(data_dir, segment_bytes=1 << 20)
    st.append(ents(1, 1, 3))
    st.sync()
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    for k in range(3, 60, 8):
        st.append(ents(1, k, k + 8))
    st.sync()
    assert len(calls) == 1
    st.sync()  # nothing new: no fsync at all
    assert len(calls) == 1
    st.close()


def test_hard_state_bootstrap_and_membership_sources(data_dir: Path) -> None:
    boot = Membership(voters={"a": "tcp://127.0.0.1:9001"})
    st = Storage.open(data_dir, **SMALL)
    st.bootstrap(boot)
    with pytest.raises(AlreadyBootstrapped):
        st.bootstrap(boot)
    assert not st.is_empty()
    st.set_hard_state(HardState(5, "a"))
    with pytest.raises(ValueError):
        st.set_hard_state(HardState(4, "b"))
    assert st.initial_state() == (HardState(5, "a"), boot)
    newer = Membership(voters={"a": "x", "b": "y"}, learners={"c": "z"})
    st.append([ent(1, 1), Entry(1, 2, EntryType.CONFIG, newer.encode()), *ents(1, 3, 40)])
    st.sync()
    st = reopen(st)
    assert st.initial_state() == (HardState(5, "a"), newer)
    snap_m = Membership(voters={"q": "r"})
    st.write_snapshot(30, 1, snap_m, [b"state"])
    assert st.initial_state()[1] == snap_m  # snapshot is newer than the CONFIG at 2
    st.close()


def test_data_dir_is_locked_while_open(data_dir: Path) -> None:
    st = Storage.open(data_dir)
    with pytest.raises(DataDirLocked):
        Storage.open(data_dir)
    st.close()
    Storage.open(data_dir).close()


def test_open_rejects_bad_settings(data_dir: Path) -> None:
    with pytest.raises(ValueError):
        Storage.open(data_dir, fsync="sometimes")
    with pytest.raises(ValueError):
        Storage.open(data_dir, segment_bytes=10)


def test_tail_checkpoint_limits_the_open_scan(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zraft.storage import log as seglog
    from zraft.storage import records

    monkeypatch.setattr(seglog, "CHECKPOINT_BYTES", 2000)
    st = Storage.open(data_dir, segment_bytes=1 << 20)
    st.append(ents(1, 1, 100))
    st.sync()  # writes the checkpoint
    st.append(ents(1, 100, 110))
    st.sync()
    st.close()
    starts: list[int] = []
    real = records.scan_records

    def spy(buf: bytes, start: int, first: int, prev: int, limit: int) -> records.ScanResult:
        starts.append(start)
        return real(buf, start, first, prev, limit)

    monkeypatch.setattr(records, "scan_records", spy)
    st = Storage.open(data_dir, segment_bytes=1 << 20)
    assert all_entries(st) == ents(1, 1, 110)
    assert starts and starts[-1] > 2000  # only the bytes after the checkpoint were scanned
    st.append(ents(2, 20, 25))  # truncate below the checkpoint: it must not be trusted
    st.sync()
    st.close()
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        assert all_entries(st) == ents(1, 1, 20) + ents(2, 20, 25)


def test_checkpoint_chunks_accumulate_and_seal_into_the_index(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    from zraft.storage import log as seglog
    from zraft.storage import records

    monkeypatch.setattr(seglog, "CHECKPOINT_BYTES", 500)
    st = Storage.open(data_dir, segment_bytes=3000)
    for k in range(1, 100, 10):  # several checkpoint chunks, then a roll seals them
        st.append(ents(1, k, k + 10))
        st.sync()
        if k == 31:
            st = reopen(st, segment_bytes=3000)  # chunks go on after a reopen
    assert st.segment_count() >= 2
    st.close()
    first_seg = sorted((data_dir / "log").glob("*.seg"))[0]
    idx = records.decode_index(first_seg.with_suffix(".idx").read_bytes(), 1)
    assert idx is not None and idx.seg_size == first_seg.stat().st_size
    assert list(idx.offsets) == sorted(idx.offsets) and len(idx.offsets) == len(set(idx.offsets))
    with capture_logs() as logs:
        st = Storage.open(data_dir, segment_bytes=3000)
    assert not [e for e in logs if e["event"] == "storage_index_rebuilt"]
    assert all_entries(st) == ents(1, 1, 101)
    st.close()


def test_compaction_unlinks_on_a_helper_thread_oldest_first(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlinking a full segment takes milliseconds: never on the caller's (reactor's) thread."""
    import threading

    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 100))
    st.sync()
    segs_before = sorted(p.name for p in data_dir.rglob("*.seg"))
    unlinked: list[tuple[str, str]] = []
    real_unlink = os.unlink

    def spy(path: str | os.PathLike[str], *a: object, **kw: object) -> None:
        unlinked.append((threading.current_thread().name, Path(path).name))
        real_unlink(path)

    st.write_snapshot(50, 1, Membership(), [b"state"])
    monkeypatch.setattr(os, "unlink", spy)
    st.compact(50)
    first = st.first_index()
    st.wait_deletions()
    segs_after = sorted(p.name for p in data_dir.rglob("*.seg"))
    gone = [name for _, name in unlinked if name.endswith(".seg")]
    assert gone and gone == sorted(gone), "oldest first"
    assert set(gone) == set(segs_before) - set(segs_after)
    assert all(t.startswith("zraft-unlink") for t, _ in unlinked), unlinked
    assert all(int(n.split(".")[0]) < first for n in gone)
    monkeypatch.setattr(os, "unlink", real_unlink)
    st = reopen(st)  # what is left opens as the same log
    assert st.first_index() == first and all_entries(st) == ents(1, first, 100)
    st.close()
