"""Damaged files: torn tails are cut, everything else is a CorruptLog until repair()."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import all_entries, ents
from structlog.testing import capture_logs

from zraft.core.types import Entry, EntryType, HardState, Membership
from zraft.storage import (
    CorruptHardState,
    CorruptLog,
    Storage,
    repair,
)
from zraft.storage import records as rec

SMALL = {"segment_bytes": 512}


def flip(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "log").glob("*.seg"))


def record_offsets(path: Path) -> list[int]:
    buf = path.read_bytes()
    base, prev = rec.decode_segment_header(buf) or (0, 0)
    return list(rec.scan_records(buf, rec.SEG_HDR_BYTES, base, prev, 1 << 20).offsets)


def build(data_dir: Path, n: int = 120) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, n))
        st.sync()


def test_bit_flip_in_tail_record_is_cut_as_torn(data_dir: Path) -> None:
    build(data_dir)
    tail = segments(data_dir)[-1]
    last_off = record_offsets(tail)[-1]
    flip(tail, last_off + rec.REC_HDR_BYTES + 2)
    with capture_logs() as logs, Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == 118
        assert all_entries(st) == ents(1, 1, 119)
    cut = [e for e in logs if e["event"] == "storage_torn_tail_cut"]
    assert cut and cut[0]["file"] == str(tail) and cut[0]["offset"] == last_off
    assert tail.stat().st_size == last_off


def test_partial_tail_write_is_cut(data_dir: Path) -> None:
    build(data_dir)
    tail = segments(data_dir)[-1]
    last_off = record_offsets(tail)[-1]
    os.truncate(tail, last_off + 5)
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == 118
        st.append(ents(2, 119, 125))  # and the log goes on from there
        st.sync()
    with Storage.open(data_dir, **SMALL) as st:
        assert all_entries(st) == ents(1, 1, 119) + ents(2, 119, 125)


@pytest.mark.parametrize("drop_index", [False, True])
def test_bit_flip_in_sealed_segment_is_corrupt_then_repaired(
    data_dir: Path, drop_index: bool
) -> None:
    build(data_dir)
    victim = segments(data_dir)[2]
    if drop_index:
        victim.with_suffix(".idx").unlink()
    offs = record_offsets(victim)
    bad = offs[1]
    flip(victim, bad + rec.REC_HDR_BYTES + 1)
    with pytest.raises(CorruptLog) as err:
        Storage.open(data_dir, **SMALL)
    assert str(victim) in str(err.value) and f"offset {bad}" in str(err.value)
    assert err.value.path == str(victim) and err.value.offset == bad
    first_bad_index = int(victim.stem) + 1
    later = [str(p) for p in segments(data_dir)[3:]]
    report = repair(data_dir)
    assert report.changed and report.ok
    assert report.cuts[0].path == str(victim) and report.cuts[0].offset == bad
    assert report.cuts[0].removed_files == later and later
    assert segments(data_dir)[-1] == victim
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == first_bad_index - 1
        assert all_entries(st) == ents(1, 1, first_bad_index)


def test_flip_in_middle_of_tail_segment_is_corrupt(data_dir: Path) -> None:
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append(ents(1, 1, 50))
        st.sync()
    tail = segments(data_dir)[-1]
    bad = record_offsets(tail)[10]
    flip(tail, bad + rec.REC_HDR_BYTES)
    with pytest.raises(CorruptLog, match=re.escape(f"offset {bad}")):
        Storage.open(data_dir)
    repair(data_dir)
    with Storage.open(data_dir) as st:
        assert all_entries(st) == ents(1, 1, 11)


def test_any_flipped_header_bit_in_the_tail_segment_is_corrupt_not_torn(
    data_dir: Path,
) -> None:
    """A flip in a record's length field made the record seem to run past the end (or to
    end early, in garbage): opened as a torn tail, acknowledged entries were cut. Every
    bit of a mid-segment header must be refused instead."""
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append([Entry(1, i, EntryType.NORMAL, bytes(range(i % 200))) for i in range(1, 51)])
        st.sync()
    tail = segments(data_dir)[-1]
    pristine = tail.read_bytes()
    bad = record_offsets(tail)[20]
    silently_cut = []
    for byte in range(rec.REC_HDR_BYTES):
        for bit in range(8):
            tail.write_bytes(pristine)
            flip(tail, bad + byte, bit)
            try:
                Storage.open(data_dir, segment_bytes=1 << 20).close()
            except CorruptLog as exc:
                assert exc.offset == bad
            else:
                silently_cut.append((byte, bit))
    assert silently_cut == []


def test_a_torn_overwrite_with_stale_records_behind_it_is_still_torn(data_dir: Path) -> None:
    """A new leader's entry written over a cut suffix, torn by a power loss part way: its
    header is whole, its data half there, then stale old bytes. That is a torn final
    write, not damage in place (an earlier fix searched ahead for an intact record and
    found the stale one: a node that needed a manual repair after a plain power loss)."""
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append([Entry(1, i, EntryType.NORMAL, b"old" * (10 + i)) for i in range(1, 31)])
        st.sync()
    tail = segments(data_dir)[-1]
    at = record_offsets(tail)[20]
    new = rec.encode_record(Entry(2, 21, EntryType.NORMAL, b"new" * 7))
    with open(tail, "r+b") as f:
        f.seek(at)
        f.write(new[: len(new) - 9])  # the header and part of the data reached the disk
    with capture_logs() as logs, Storage.open(data_dir) as st:
        assert st.last_index() == 20
    assert any(e["event"] == "storage_torn_tail_cut" and e["offset"] == at for e in logs)


def test_a_torn_record_whose_data_names_the_next_index_near_the_end_is_cut(
    data_dir: Path,
) -> None:
    """The search for a following record once read a header past the end of the file
    (struct.error instead of a cut) when the bytes of index N+1 sat near the end."""
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append([Entry(1, i, EntryType.NORMAL, b"x" * 40) for i in range(1, 21)])
        st.sync()
    tail = segments(data_dir)[-1]
    at = record_offsets(tail)[-1]  # record 20, the last
    data = b"y" * 30 + (21).to_bytes(8, "little")  # its data ends with index 21's bytes
    torn = rec.encode_record(Entry(1, 20, EntryType.NORMAL, data + b"z" * 60))
    with open(tail, "r+b") as f:
        f.truncate(at)
        f.seek(at)
        f.write(torn[: rec.REC_HDR_BYTES + len(data)])  # the rest never reached the disk
    with Storage.open(data_dir) as st:
        assert st.last_index() == 19


def test_damage_a_checkpoint_shows_was_synced_is_refused_even_if_it_looks_torn(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zeros with nothing intact right behind them look like a torn write; but the
    tail's checkpoint, appended only after a sync, says those bytes were durable."""
    from zraft.storage import log as seglog

    monkeypatch.setattr(seglog, "CHECKPOINT_BYTES", 256)
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append(ents(1, 1, 50))
        st.sync()  # a checkpoint now covers all 49 records
        st.append(ents(1, 50, 52))
        st.sync()  # these two are under 256 bytes: not checkpointed
    tail = segments(data_dir)[-1]
    pristine, offs = tail.read_bytes(), record_offsets(tail)
    with open(tail, "r+b") as f:
        f.seek(offs[40])
        f.write(b"\0" * 150 + os.urandom(40))
    with pytest.raises(CorruptLog, match="a checkpoint shows were synced"):
        Storage.open(data_dir)
    tail.write_bytes(pristine[: offs[-1] + 10])  # past the checkpoint: torn, as before
    with Storage.open(data_dir) as st:
        assert all_entries(st) == ents(1, 1, 51)


@pytest.mark.parametrize("keep", ["record boundary", "header only", "nothing"])
def test_a_tail_cut_short_below_its_checkpoint_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, keep: str
) -> None:
    """A file that simply ends, at a record boundary or inside its header, holds no bad
    bytes to look at: only the checkpoint knows synced records were there (found in
    review: the open succeeded with 20, or 0, of 49 synced entries)."""
    from zraft.storage import log as seglog

    monkeypatch.setattr(seglog, "CHECKPOINT_BYTES", 256)
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append(ents(1, 1, 50))
        st.sync()  # a checkpoint now covers all 49 records
    tail = segments(data_dir)[-1]
    size = {"record boundary": record_offsets(tail)[20], "header only": rec.SEG_HDR_BYTES}
    os.truncate(tail, size.get(keep, 0))
    with pytest.raises(CorruptLog, match="a checkpoint shows were synced"):
        Storage.open(data_dir, segment_bytes=1 << 20)


def test_a_cut_inside_the_tail_then_a_crash_still_opens(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """truncate_suffix drops the tail's checkpoint (durably) before it cuts the file: a
    copy taken right after the cut, as a crash leaves it, is not mistaken for damage."""
    import shutil

    from zraft.storage import log as seglog

    monkeypatch.setattr(seglog, "CHECKPOINT_BYTES", 256)
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append(ents(1, 1, 50))
        st.sync()
        st.append(ents(2, 30, 35))  # a new leader's entries replace 30..49
        shutil.copytree(data_dir, tmp_path / "crashed")
    with Storage.open(tmp_path / "crashed", segment_bytes=1 << 20) as st:
        assert all_entries(st)[:29] == ents(1, 1, 30)


def test_truncated_sealed_segment_is_corrupt(data_dir: Path) -> None:
    build(data_dir)
    victim = segments(data_dir)[1]
    offs = record_offsets(victim)
    last_whole = int(victim.stem) + len(offs) - 2  # the final record loses its last bytes
    os.truncate(victim, victim.stat().st_size - 7)
    with pytest.raises(CorruptLog, match=re.escape(f"{victim}: record runs past end of file")):
        Storage.open(data_dir, **SMALL)
    cut = repair(data_dir).cuts[0]
    assert (cut.path, cut.offset) == (str(victim), offs[-1])
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == last_whole
        assert all_entries(st) == ents(1, 1, last_whole + 1)


def test_missing_middle_segment_is_corrupt(data_dir: Path) -> None:
    build(data_dir)
    segs = segments(data_dir)
    segs[3].unlink()
    with pytest.raises(CorruptLog, match="does not chain") as err:
        Storage.open(data_dir, **SMALL)
    assert err.value.path == str(segs[4]) and "offset 0" in str(err.value)
    report = repair(data_dir)
    assert str(segs[4]) in [c.path for c in report.cuts]
    with Storage.open(data_dir, **SMALL) as st:
        assert st.last_index() == int(segs[3].stem) - 1
        assert all_entries(st) == ents(1, 1, int(segs[3].stem))


def test_bad_segment_header_is_corrupt(data_dir: Path) -> None:
    build(data_dir)
    victim = segments(data_dir)[1]
    flip(victim, 9)
    with pytest.raises(CorruptLog, match=re.escape(f"{victim}: bad segment header at offset 0")):
        Storage.open(data_dir, **SMALL)


def test_corrupt_hard_state_names_the_file(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.set_hard_state(HardState(7, "n1"))
        st.append(ents(3, 1, 10))
        st.sync()
    hs = data_dir / "hardstate"
    flip(hs, hs.stat().st_size - 3)
    with pytest.raises(CorruptHardState, match=re.escape(str(hs))):
        Storage.open(data_dir, **SMALL)
    report = repair(data_dir)  # refuses to guess term/vote by default
    assert report.hard_state_error and not report.ok
    with pytest.raises(CorruptHardState):
        Storage.open(data_dir, **SMALL)
    assert repair(data_dir, reset_hard_state=True).hard_state_reset
    with Storage.open(data_dir, **SMALL) as st:
        assert st.initial_state()[0] == HardState(4, "")  # highest log term + 1, no vote
        assert all_entries(st) == ents(3, 1, 10)


def test_a_compacted_log_whose_only_snapshot_is_corrupt_is_refused(data_dir: Path) -> None:
    """Opening it used to warn and go on: the node then applied entries 21.. to an empty
    state machine, silently diverging. Now it refuses; repair drops the log so the node
    starts empty and is caught up by its leader (snapshot included)."""
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 60))
        st.sync()
        st.set_hard_state(HardState(2, "a"))
        st.write_snapshot(30, 1, Membership(voters={"a": "1"}), [b"state" * 50])
        st.compact(30)
        first = st.first_index()
        assert first > 1
    snap = next((data_dir / "snapshots").glob("*.snap"))
    flip(snap, 100)
    with pytest.raises(CorruptLog, match=f"log starts at index {first} but no valid snapshot"):
        Storage.open(data_dir, **SMALL)
    with pytest.raises(CorruptLog):  # set aside as .corrupt, it still cannot be trusted
        Storage.open(data_dir, **SMALL)
    report = repair(data_dir)
    assert report.log_reset and report.ok
    with Storage.open(data_dir, **SMALL) as st:
        assert (st.first_index(), st.last_index(), st.snapshot_meta()) == (1, 0, None)
        assert st.initial_state()[0] == HardState(2, "a")  # the vote is kept


def test_corrupt_newest_snapshot_falls_back_to_older(data_dir: Path) -> None:
    m1, m2 = Membership(voters={"a": "1"}), Membership(voters={"a": "2"})
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 60))
        st.sync()
        old = st.write_snapshot(20, 1, m1, [b"old-state"])
        new = st.write_snapshot(40, 1, m2, [b"new-state" * 100])
        assert st.snapshot_meta() == new
        st.compact(40)  # keeps the log back to the older snapshot, the fallback
        assert 2 < st.first_index() <= 21
    newest = data_dir / "snapshots" / "snap-00000000000000000001-00000000000000000040.snap"
    flip(newest, 50)
    with capture_logs() as logs, Storage.open(data_dir, **SMALL) as st:
        assert st.snapshot_meta() == old
        assert st.initial_state()[1] == m1
        assert all_entries(st) == ents(1, st.first_index(), 60)
    events = {e["event"]: e for e in logs}
    assert events["storage_snapshot_invalid"]["file"] == str(newest)
    assert events["storage_snapshot_restored"]["index"] == 20


def test_gap_between_snapshot_and_log_is_corrupt_and_repair_resets(data_dir: Path) -> None:
    with Storage.open(data_dir, **SMALL) as st:
        st.append(ents(1, 1, 100))
        st.write_snapshot(60, 1, Membership(), [b"s60"])
        st.compact(60)
        first = st.first_index()
        assert 11 < first <= 61
        st.write_snapshot(10, 1, Membership(), [b"s10"])  # an old one appears later
    (data_dir / "snapshots" / "snap-00000000000000000001-00000000000000000060.snap").unlink()
    with pytest.raises(CorruptLog, match="missing"):
        Storage.open(data_dir, **SMALL)
    assert repair(data_dir).log_reset
    with Storage.open(data_dir, **SMALL) as st:
        assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 1)


def test_zeroed_pages_at_the_tail_are_cut_as_torn(data_dir: Path) -> None:
    """A power loss can leave the unsynced end of the tail as zeros or garbage."""
    with Storage.open(data_dir, segment_bytes=1 << 20) as st:
        st.append(ents(1, 1, 50))
        st.sync()
    tail = segments(data_dir)[-1]
    offs = record_offsets(tail)
    with open(tail, "r+b") as f:
        f.seek(offs[40])
        f.write(b"\0" * 150 + os.urandom(40))  # zeros then junk; intact records may follow
    with capture_logs() as logs, Storage.open(data_dir) as st:
        assert all_entries(st) == ents(1, 1, 41)
    assert any(e["event"] == "storage_torn_tail_cut" and e["offset"] == offs[40] for e in logs)


def test_a_truncation_marker_below_the_first_segment_is_refused_not_applied(
    data_dir: Path,
) -> None:
    """A cut never goes below the first entry; applying such a marker (from a copied or
    restored dir) deleted every segment and opened an empty log with a warning."""
    from zraft.storage import log as seglog
    from zraft.storage import repair

    with Storage.open(data_dir, segment_bytes=1024) as st:
        st.append(ents(1, 1, 100))
        st.sync()
        st.write_snapshot(50, 1, Membership(), [b"state"])
        st.compact(50)
        st.wait_deletions()
        kept = all_entries(st)
    assert kept[0].index > 1
    seglog.write_marker(data_dir / "log", 1, durable=True)
    with pytest.raises(CorruptLog, match="below the log's first segment"):
        Storage.open(data_dir, segment_bytes=1024)
    report = repair(data_dir)
    assert any("below the log's first segment" in d.reason for d in report.cuts)
    with Storage.open(data_dir, segment_bytes=1024) as st:
        assert all_entries(st) == kept
