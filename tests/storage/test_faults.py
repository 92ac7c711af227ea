"""ENOSPC / EIO: the storage turns read-only without damage and recovers once space is back."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import all_entries, ents

from zraft.core.types import Entry, EntryType, HardState, Membership
from zraft.storage import Storage, StorageFailed

SMALL = {"segment_bytes": 4096}


def test_enospc_mid_append_fails_cleanly_and_recovers(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 21))
    st.sync()
    real = os.pwrite
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # a short write, then the disk is full
            return real(fd, memoryview(data)[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", short_then_full)
    with pytest.raises(StorageFailed, match="No space left"):
        st.append(ents(1, 21, 40))
    assert st.failed and "append" in st.failed
    with pytest.raises(StorageFailed, match="read-only"):
        st.append(ents(1, 21, 22))
    with pytest.raises(StorageFailed):
        st.set_hard_state(HardState(2, "x"))
    with pytest.raises(StorageFailed):
        st.sync()
    assert st.last_index() == 20 and all_entries(st) == ents(1, 1, 21)  # reads still work
    monkeypatch.setattr(os, "pwrite", real)
    st.recover_writes()
    assert st.failed is None
    assert all_entries(st) == ents(1, 1, 21)
    st.append(ents(2, 21, 60))
    st.sync()
    st.close()
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(1, 1, 21) + ents(2, 21, 60)


def test_eio_on_sync_fails_and_reopen_sees_a_consistent_log(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.append(ents(1, 1, 30))
    st.sync()
    st.append(ents(1, 30, 35))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(StorageFailed, match="sync"):
        st.sync()
    monkeypatch.undo()
    st.close()
    # 30..34 are cut: after a failed flush the page cache may show writes the disk lost
    # (the kernel marks the pages clean), and a reopened log's fsync would then succeed
    # without writing them: acknowledged as durable, gone at the next power loss
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(1, 1, 30)


def test_after_a_failed_flush_recover_writes_keeps_only_what_was_durable(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(data_dir, **SMALL)
    try:
        st.append(ents(1, 1, 30))
        st.sync()
        st.append(ents(1, 30, 35))
        monkeypatch.setattr(os, "fdatasync", _eio)
        with pytest.raises(StorageFailed, match="sync"):
            st.sync()
        monkeypatch.undo()
        st.recover_writes()
        st.sync()
        assert st.synced_index() == st.last_index() == 29, "never claimed durable unwritten"
        st.append(ents(1, 30, 32))  # and writes go on from there
        st.sync()
        assert all_entries(st) == ents(1, 1, 32)
    finally:
        st.close()


def _eio(fd: int) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_failed_deletion_is_reported_and_close_still_releases_the_dir(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error on the deleter thread reaches the caller (a later batch does not hide
    it) but does not stop later batches from deleting, and a close that raises it still
    closes every fd and the data-dir lock."""
    from zraft.storage import log as seglog

    st = Storage.open(data_dir, segment_bytes=1024)
    st.append(ents(1, 1, 400))
    st.sync()
    st.write_snapshot(350, 1, Membership(), [b"state"])
    real, failures = seglog.fsync_dir, {"n": 0}

    def eio_once(path: Path) -> None:
        if failures["n"] == 0:
            failures["n"] += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(path)

    monkeypatch.setattr(seglog, "fsync_dir", eio_once)
    fds_before = len(os.listdir("/proc/self/fd"))
    st.compact(60)  # fails on the helper thread
    first_kept = st.first_index()
    st.compact(120)  # a second batch must not hide the first failure
    second_kept = st.first_index()
    assert second_kept > first_kept
    with pytest.raises(OSError, match="Input/output"):
        st.wait_deletions()
    left = [int(p.stem) for p in (data_dir / "log").glob("*.seg")]
    assert min(left) == second_kept, "the second batch ran, and finished the first's work"
    failures["n"] = 0  # one more failure, for close to raise
    st.compact(200)
    with pytest.raises(OSError, match="Input/output"):
        st.close()
    assert len(os.listdir("/proc/self/fd")) < fds_before
    monkeypatch.undo()
    with Storage.open(data_dir, segment_bytes=1024) as st:  # not DataDirLocked: released
        assert st.last_index() == 399
        assert all_entries(st) == ents(1, st.first_index(), 400)


def test_enospc_on_hard_state_keeps_the_old_file(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(data_dir, **SMALL)
    st.set_hard_state(HardState(3, "a"))

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageFailed):
        st.set_hard_state(HardState(4, "b"))
    monkeypatch.undo()
    st.close()
    with Storage.open(data_dir, **SMALL) as st:
        assert st.initial_state()[0] == HardState(3, "a")
        assert not list(data_dir.glob("*.tmp"))


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="zraft-tmpfs-"))
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True,
            timeout=10,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {res.stderr.decode().strip() or res.returncode}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True, timeout=10)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)


def test_real_full_disk_on_tmpfs(small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (256 << 10))
    data = small_tmpfs / "data"
    st = Storage.open(data, segment_bytes=64 << 10)
    acked = 0
    with pytest.raises(StorageFailed, match="No space"):
        for i in range(1, 2000):  # bounded: 1 MiB fills long before 2000 x 2 KiB
            st.append([Entry(1, i, EntryType.NORMAL, bytes([i % 256]) * 2000)])
            st.sync()
            acked = i
    assert acked > 50
    with pytest.raises(StorageFailed):
        st.append([Entry(1, acked + 1, EntryType.NORMAL, b"x")])
    filler.unlink()
    st.recover_writes()
    assert st.last_index() >= acked
    got = st.entries(1, acked + 1, 1 << 40)
    assert [e.data for e in got] == [bytes([i % 256]) * 2000 for i in range(1, acked + 1)]
    nxt = st.last_index() + 1
    st.append([Entry(2, nxt, EntryType.NORMAL, b"after")])
    st.sync()
    st.close()
    with Storage.open(data, segment_bytes=64 << 10) as st:
        assert st.entries(nxt, nxt + 1, 10)[0].data == b"after"


def test_enospc_while_rolling_to_a_new_segment(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Storage.open(data_dir, segment_bytes=512)
    st.append(ents(1, 1, 5))
    st.sync()
    real_open = os.open

    def no_new_files(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT and str(path).endswith(".seg"):
            fd = real_open(path, flags, mode)  # the file appears, its header never lands
            os.close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_new_files)
    with pytest.raises(StorageFailed):
        st.append(ents(1, 5, 60))
    written = st.last_index()
    assert 4 <= written < 59
    assert all_entries(st) == ents(1, 1, written + 1)
    monkeypatch.undo()
    st.recover_writes()
    assert all_entries(st) == ents(1, 1, written + 1)
    st.append(ents(1, written + 1, 80))
    st.sync()
    st.close()
    with Storage.open(data_dir, segment_bytes=512) as st:
        assert all_entries(st) == ents(1, 1, 80)
