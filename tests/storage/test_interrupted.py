"""Crash points inside truncation, compaction and snapshot install, staged by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import all_entries, ents

from zraft.core.types import Membership
from zraft.storage import Storage
from zraft.storage import log as seglog
from zraft.storage.log import write_marker

SMALL = {"segment_bytes": 512}


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "log").glob("*.seg"))


def test_marker_finishes_an_interrupted_truncation(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))
        st.sync()
    segs = segments(data_dir)
    cut_at = int(segs[2].stem) + 3
    # crash after the marker and after deleting only the newest segment
    write_marker(data_dir / "log", cut_at, durable=False)
    segs[-1].unlink()
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == cut_at - 1
        assert all_entries(st) == ents(1, 1, cut_at)
    assert not (data_dir / "log" / "TRUNCATE").exists()
    assert segments(data_dir)[-1] == segs[2]


def test_marker_with_every_file_still_present(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))
        st.sync()
    write_marker(data_dir / "log", 40, durable=False)
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == 39
        st.append(ents(2, 40, 45))
        st.sync()
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(1, 1, 40) + ents(2, 40, 45)


def test_partially_deleted_prefix_from_compaction_opens(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))
        st.sync()
        st.write_snapshot(60, 1, Membership(), [b"state"])  # what compaction starts from
    segs = segments(data_dir)
    for p in segs[:2]:  # oldest first: a crash leaves a contiguous suffix
        p.unlink()
        p.with_suffix(".idx").unlink()
    with Storage.open(data_dir, **SMALL) as st:
        assert st.first_index() == int(segs[2].stem)
        assert st.term(st.first_index() - 1) == 1
        assert all_entries(st) == ents(1, st.first_index(), 100)


def test_interrupted_snapshot_install_resets_the_log_on_open(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 30))
        st.sync()
    # another node's snapshot at (50, 3) was renamed into place, the log reset did not happen
    other = data_dir.parent / "other"
    with Storage.open(other, **SMALL) as o:
        o.write_snapshot(50, 3, Membership(voters={"x": "y"}), [b"state"])
    for p in (other / "snapshots").glob("*.snap"):
        shutil.copy(p, data_dir / "snapshots" / p.name)
    with Storage.open(data_dir, **SMALL) as st:
        assert (st.first_index(), st.last_index(), st.term(50)) == (51, 50, 3)
        st.append(ents(3, 51, 60))
        st.sync()
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(3, 51, 60)
        assert st.initial_state()[1] == Membership(voters={"x": "y"})


def test_leftover_torn_new_segment_is_removed(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))
        st.sync()
        last = st.last_index()
    stray = data_dir / "log" / f"{last + 1:020d}.seg"
    stray.write_bytes(b"ZRSEG0")  # crash while writing a new segment's header
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == last
        st.append(ents(1, last + 1, last + 40))
        st.sync()
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(1, 1, last + 40)


def test_a_crash_while_compacted_segments_are_freed_leaves_an_openable_log(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deleter frees a compacted segment's blocks a chunk at a time; a crash (kill -9,
    OOM) at any pause must leave a log that opens to the same entries, never a short
    file under a segment's name (recovery would refuse it as damage)."""
    monkeypatch.setattr(seglog, "DELETE_CHUNK_BYTES", 256)
    images: list[Path] = []

    def crash_image(_seconds: float) -> None:  # the deleter's pause: copy what a crash leaves
        image = tmp_path / f"crash{len(images)}"
        shutil.copytree(data_dir, image)
        images.append(image)

    st = Storage.open(data_dir, segment_bytes=2048)
    st.append(ents(1, 1, 200))
    st.sync()
    st.write_snapshot(150, 1, Membership(), [b"state"])
    monkeypatch.setattr(seglog.time, "sleep", crash_image)
    st.compact(150)
    st.wait_deletions()
    monkeypatch.undo()
    st.close()
    assert len(images) >= 6, "every compacted segment was freed in several steps"
    for image in images:
        (image / "LOCK").unlink(missing_ok=True)
        with Storage.open(image, segment_bytes=2048) as reopened:
            assert reopened.last_index() == 199, image.name
            assert all_entries(reopened) == ents(1, reopened.first_index(), 200), image.name
