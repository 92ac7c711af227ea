"""Snapshot files: write, read, prune, ordering, chunks, and the follower's staged install."""

from __future__ import annotations

import os
import shutil
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import all_entries, ents

from zraft.core.types import Compacted, Membership, SnapshotMeta
from zraft.storage import CorruptSnapshot, Storage

SMALL = {"segment_bytes": 512}
M = Membership(voters={"a": "tcp://127.0.0.1:7001", "b": "tcp://127.0.0.1:7002"})


def snap_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "snapshots").glob("*.snap"))


def test_write_read_and_chunks(data_dir: Path) -> None:
    blob = os.urandom(300_000)
    with Storage.open(data_dir) as st:
        meta = st.write_snapshot(12, 3, M, [blob[:1000], blob[1000:200_000], blob[200_000:]])
        assert meta == SnapshotMeta(12, 3, M, len(blob), zlib.crc32(blob))
        assert st.snapshot_meta() == meta
        assert b"".join(st.read_snapshot(meta, chunk_bytes=4096)) == blob
        assert st.snapshot_chunk(12, 299_990, 100) == blob[299_990:]
        assert st.snapshot_chunk(12, 5, 10) == blob[5:15]
        with pytest.raises(Compacted):
            st.snapshot_chunk(11, 0, 10)
    with Storage.open(data_dir) as st:
        assert st.snapshot_meta() == meta
        assert (st.first_index(), st.last_index(), st.term(12)) == (13, 12, 3)


def test_prune_keeps_newest_by_term_then_index(data_dir: Path) -> None:
    with Storage.open(data_dir, keep_snapshots=2) as st:
        a = st.write_snapshot(1000, 9, M, [b"a"])
        b = st.write_snapshot(20, 10, M, [b"b"])  # higher term wins over higher index
        assert st.snapshot_meta() == b
        st.write_snapshot(5, 2, M, [b"c"])  # older than both: pruned at once
        assert len(snap_files(data_dir)) == 2
        assert st.snapshot_meta() == b
        d = st.write_snapshot(30, 10, M, [b"d"])
        assert st.snapshot_meta() == d
    names = snap_files(data_dir)
    assert names == sorted([f"snap-{m.term:020d}-{m.index:020d}.snap" for m in (b, d)])
    assert a.index == 1000


def test_renamed_snapshot_file_is_not_trusted_by_name(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        real = st.write_snapshot(7, 1, M, [b"x"])
    src = data_dir / "snapshots" / snap_files(data_dir)[0]
    shutil.copy(src, data_dir / "snapshots" / f"snap-{99:020d}-{99:020d}.snap")
    with Storage.open(data_dir) as st:
        assert st.snapshot_meta() == real


def test_read_snapshot_detects_damage(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        meta = st.write_snapshot(3, 1, M, [b"0123456789" * 100])
        path = data_dir / "snapshots" / snap_files(data_dir)[0]
        with open(path, "r+b") as f:
            f.seek(500)
            f.write(b"X")
        with pytest.raises(CorruptSnapshot):
            b"".join(st.read_snapshot(meta))


def test_a_snapshot_that_rots_on_disk_is_set_aside_as_it_is_sent(data_dir: Path) -> None:
    """A leader sends from offset 0 up: the last chunk's read finds the bad checksum, and
    the file is set aside (Compacted: send another) instead of being sent for ever to
    followers that reject every copy (found in review)."""
    blob = b"0123456789" * 100
    with Storage.open(data_dir, keep_snapshots=2) as st:
        older = st.write_snapshot(2, 1, M, [b"old"])
        meta = st.write_snapshot(3, 1, M, [blob])
        assert b"".join(st.snapshot_chunk(3, off, 300) for off in range(0, 1000, 300)) == blob
        assert st.snapshot_chunk(3, 600, 300) == blob[600:900]  # resumed mid-file: unchecked
        path = data_dir / "snapshots" / snap_files(data_dir)[-1]
        with open(path, "r+b") as f:
            f.seek(500)
            f.write(b"X")
        st.snapshot_chunk(3, 0, 300)
        st.snapshot_chunk(3, 300, 300)
        st.snapshot_chunk(3, 600, 300)
        with pytest.raises(Compacted, match="checksum"):
            st.snapshot_chunk(3, 900, 300)
        assert st.snapshots_set_aside() == 1
        assert st.snapshot_meta() == older != meta  # the fallback the log was kept back to
        assert path.with_name(path.name + ".corrupt").exists() and not path.exists()
        with pytest.raises(Compacted):
            st.snapshot_chunk(3, 0, 300)
        other = blob[::-1]  # its replacement at the same index: other bytes, other CRC
        st.write_snapshot(3, 1, M, [other])
        assert st.snapshot_chunk(3, 600, 300) == other[600:900]  # no stale CRC applies
        assert b"".join(st.snapshot_chunk(3, off, 300) for off in range(0, 1000, 300)) == other
        assert st.snapshots_set_aside() == 1


def test_staged_install_resets_a_disagreeing_log(data_dir: Path) -> None:
    state = os.urandom(10_000)
    meta = SnapshotMeta(80, 4, M, len(state), zlib.crc32(state))
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 50))
        for off in range(0, len(state), 3000):
            st.stage_snapshot_chunk(meta, off, state[off : off + 3000])
        st.stage_snapshot_chunk(meta, 3000, state[3000:6000])  # a resent chunk is harmless
        assert st.finish_staged_snapshot(meta)
        assert st.snapshot_meta() == meta
        # published, but the log is the core's to replace: it still says what it held
        assert (st.first_index(), st.last_index()) == (1, 49)
        st.restart_log_after(meta)
        assert (st.first_index(), st.last_index(), st.term(80)) == (81, 80, 4)
        st.append(ents(4, 81, 90))
        st.sync()
    with Storage.open(data_dir, **SMALL) as st:
        assert st.snapshot_meta() == meta
        assert all_entries(st) == ents(4, 81, 90)
        assert b"".join(st.read_snapshot(meta)) == state
    assert not list((data_dir / "snapshots").glob("*.part"))


def test_staged_install_keeps_an_agreeing_log_suffix(data_dir: Path) -> None:
    meta = SnapshotMeta(30, 1, M, 3, zlib.crc32(b"abc"))
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 60))
        st.stage_snapshot_chunk(meta, 0, b"abc")
        assert st.finish_staged_snapshot(meta)
        st.restart_log_after(meta)
        assert st.first_index() <= 31 and st.last_index() == 59
        assert all_entries(st) == ents(1, st.first_index(), 60)


def test_a_published_snapshot_with_the_log_not_yet_restarted_is_finished_at_open(
    data_dir: Path,
) -> None:
    """A crash between publishing a staged snapshot and restarting the log after it:
    the next open makes the log agree with the snapshot (the core had adopted it)."""
    meta = SnapshotMeta(80, 4, M, 3, zlib.crc32(b"abc"))
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))  # a different, uncommitted entry at 80
        st.sync()
        st.stage_snapshot_chunk(meta, 0, b"abc")
        assert st.finish_staged_snapshot(meta)
    with Storage.open(data_dir, **SMALL) as st:
        assert (st.first_index(), st.last_index(), st.term(80)) == (81, 80, 4)


def test_staged_install_with_bad_checksum_is_rejected(data_dir: Path) -> None:
    meta = SnapshotMeta(10, 2, M, 6, zlib.crc32(b"good!!"))
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 5))
        st.stage_snapshot_chunk(meta, 0, b"bad")
        st.stage_snapshot_chunk(meta, 3, b"!!!")
        assert not st.finish_staged_snapshot(meta)
        assert st.snapshot_meta() is None
        assert st.last_index() == 4
        assert not list((data_dir / "snapshots").iterdir())
        with pytest.raises(ValueError):
            st.stage_snapshot_chunk(meta, 4, b"gap")
        short = SnapshotMeta(10, 2, M, 6, zlib.crc32(b"good!!"))
        st.stage_snapshot_chunk(short, 0, b"good")
        assert not st.finish_staged_snapshot(short)  # too short


def test_write_snapshot_from_a_helper_thread(data_dir: Path) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 20))
    st.sync()
    done: list[SnapshotMeta] = []
    gate = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        gate.wait(10)  # the reactor keeps appending while the snapshot is half written
        yield b"b" * 1000

    worker = threading.Thread(target=lambda: done.append(st.write_snapshot(19, 1, M, chunks())))
    worker.start()
    for k in range(20, 200, 10):
        st.append(ents(1, k, k + 10))
        st.sync()
        assert st.entries(k, k + 10, 1 << 20) == ents(1, k, k + 10)
    assert st.snapshot_meta() is None
    gate.set()
    worker.join(10)
    assert done and st.snapshot_meta() == done[0]
    st.compact(19)
    assert all_entries(st) == ents(1, st.first_index(), 200)
    st.close()
