"""Zero-filled spare segments: a roll lands in one, and recovery reads its zeros as the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import all_entries, ents
from structlog.testing import capture_logs

from zraft.storage import Storage
from zraft.storage import log as seglog
from zraft.storage import records as rec

SEGMENT_BYTES = 64 << 10


@pytest.fixture(autouse=True)
def small_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spares for small segments too, so a test rolls a few in milliseconds."""
    monkeypatch.setattr(seglog, "PREFILL_MIN_SEGMENT_BYTES", 4096)


def _segments(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if rec.parse_segment_name(p.name) is not None)


def _fill_until_roll(st: Storage) -> None:
    """Append past half a segment (the spare is asked for), wait for the spare, then roll."""
    log = st._log
    while not log._segs or log._segs[-1].end <= SEGMENT_BYTES // 2:
        last = st.last_index()
        st.append(ents(1, last + 1, last + 50))
        st.sync()
    assert log._prefill is not None and log._prefill._thread is not None
    log._prefill._thread.join()  # the fill is done: the next roll takes the spare
    segments = log.segment_count()
    while log.segment_count() == segments:
        last = st.last_index()
        st.append(ents(1, last + 1, last + 50))
        st.sync()


def test_a_roll_lands_in_a_zero_filled_spare_and_seals_the_old_segment_exactly(
    data_dir: Path,
) -> None:
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        _fill_until_roll(st)
        sealed, active = _segments(data_dir / "log")
        assert sealed.stat().st_size == st._log._segs[0].end, "cut to its last record"
        assert active.stat().st_size == SEGMENT_BYTES, "the spare, zeros past the records"
        expected = all_entries(st)
    finally:
        st.close()
    assert not (data_dir / "log" / seglog.SPARE_NAME).exists(), "close removes an unused spare"
    with capture_logs() as logs:
        again = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        assert all_entries(again) == expected
        events = [e["event"] for e in logs]
        assert "storage_prefilled_tail_trimmed" in events and "storage_torn_tail_cut" not in events
    finally:
        again.close()


def test_a_crash_inside_a_spare_keeps_every_synced_entry_and_cuts_a_torn_write(
    data_dir: Path, tmp_path: Path
) -> None:
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        _fill_until_roll(st)
        expected = all_entries(st)
        crashed = tmp_path / "crashed"
        shutil.copytree(data_dir, crashed)  # the files as a SIGKILL would leave them
        end = st._log._segs[-1].end
    finally:
        st.close()
    torn = tmp_path / "torn"
    shutil.copytree(crashed, torn)
    with open(_segments(torn / "log")[-1], "r+b") as f:  # half a record header, then zeros
        f.seek(end)
        f.write(b"\x17" * 13)
    with capture_logs() as logs:
        clean, cut = Storage.open(crashed, segment_bytes=SEGMENT_BYTES), Storage.open(torn)
    try:
        assert all_entries(clean) == expected == all_entries(cut)
        assert [e["offset"] for e in logs if e["event"] == "storage_torn_tail_cut"] == [end]
        clean.append(ents(2, clean.last_index() + 1, clean.last_index() + 5))  # writes go on
        clean.sync()
    finally:
        clean.close()
        cut.close()


def test_a_failed_fill_means_no_spare_not_a_failed_log(data_dir: Path) -> None:
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        assert st._log._prefill is not None
        st._log._prefill.path = data_dir / "gone" / seglog.SPARE_NAME  # cannot be created
        with capture_logs() as logs:
            _fill_until_roll(st)
        assert [e for e in logs if e["event"] == "storage_prefill_failed"]
        active = _segments(data_dir / "log")[-1]
        assert active.stat().st_size == st._log._segs[-1].end, "appended as before"
        expected = all_entries(st)
    finally:
        st.close()
    again = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        assert all_entries(again) == expected
    finally:
        again.close()


def test_a_spare_whose_header_write_tore_is_cut_as_torn(data_dir: Path) -> None:
    """The rename happens before the header is written: a crash in between leaves part
    of a header and zeros, which must open as a torn tail, not as a corrupt log."""
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        _fill_until_roll(st)
        sealed_last = st._log._segs[0].last
        expected = all_entries(st)[:sealed_last]
    finally:
        st.close()
    active = _segments(data_dir / "log")[-1]
    header = active.read_bytes()[: rec.SEG_HDR_BYTES]
    active.write_bytes(header[:13] + bytes(SEGMENT_BYTES - 13))  # as if no record came yet
    active.with_suffix(".idx").unlink(missing_ok=True)
    with capture_logs() as logs:
        again = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        assert all_entries(again) == expected
        assert [e["reason"] for e in logs if e["event"] == "storage_torn_tail_cut"] == [
            "torn header"
        ]
    finally:
        again.close()


def test_no_spare_on_a_nearly_full_disk(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log's own appends must not be the ones to meet ENOSPC for a spare's sake."""
    monkeypatch.setattr(seglog, "PREFILL_FREE_FACTOR", 1 << 40)  # no disk is that free
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    try:
        with capture_logs() as logs:
            _fill_until_roll(st)
        assert [e for e in logs if e["event"] == "storage_prefill_skipped"]
        assert not (data_dir / "log" / seglog.SPARE_NAME).exists()
        active = _segments(data_dir / "log")[-1]
        assert active.stat().st_size == st._log._segs[-1].end, "appended as before"
    finally:
        st.close()
