"""Tests for ``zraft tail``: merge order, filters, timeline, JSON passthrough, garbage,
and follow mode (late files, rotation, truncation, the reorder window).

Follow tests run the tailer in a thread and poll its output with a bounded
deadline; they stop it through its ``stop_event`` (or ``max_idle_s``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zraft.tail import (
    MAX_LINE_BYTES,
    TailConfig,
    Tailer,
    add_arguments,
    format_key,
    format_value,
    main,
    normalize_timestamp,
    parse_json_line,
    parse_term_range,
    parse_time_bound,
    run,
)

REPO = Path(__file__).resolve().parents[2]
BASE = datetime(2026, 11, 24, 18, 30, 0, tzinfo=UTC)
FUTURE = datetime(2100, 1, 1, tzinfo=UTC)  # never "old enough" for the wall-clock release
WAIT_S = 10.0


def rec(
    ms: float, node: str, event: str, level: str = "info", base: datetime = BASE, **kw: Any
) -> str:
    body = {"timestamp": format_key(base + timedelta(milliseconds=ms)), "level": level}
    return json.dumps({**body, "event": event, "node": node, **kw})


def write(path: Path, lines: list[str], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["--color", "never", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def json_out(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    """Three node files, interleaved in time; n2's clock steps back once."""
    write(
        tmp_path / "n1.log",
        [
            rec(0, "n1", "node_started", term=0, seq=1),
            rec(30, "n1", "election_started", term=3, pre_vote=False, seq=4),
            rec(
                60,
                "n1",
                "role_change",
                "warning",
                term=3,
                role="leader",
                prev_role="candidate",
                seq=7,
            ),
            rec(90, "n1", "commit", "debug", term=3, index=7, seq=10),
        ],
    )
    write(
        tmp_path / "n2.log",
        [
            rec(10, "n2", "node_started", term=0, seq=2),
            rec(40, "n2", "vote_cast", term=3, candidate="n1", seq=5),
            rec(5, "n2", "clock_stepped_back", "error", term=3, seq=6),  # backwards
            rec(70, "n2", "leader_change", term=3, leader="n1", prev_leader=None, seq=8),
            rec(
                100, "n2", "snapshot_installed", term=8, index=50, size=2048, duration_ms=4, seq=11
            ),
        ],
    )
    write(
        tmp_path / "n3.jsonl",
        [
            rec(20, "n3", "heartbeat_rtt", "debug", term=2, rtt_ms=1.5, seq=3),
            rec(
                80,
                "n3",
                "membership_change",
                term=3,
                voters=["n1", "n2", "n3"],
                learners=["n4"],
                index=9,
                seq=9,
            ),
            rec(
                110, "n3", "snapshot_sent", "critical", term=9, to="n4", index=50, size=2048, seq=12
            ),
        ],
    )
    return tmp_path


# ---------------------------------------------------------------- parsing helpers
def test_parse_term_range() -> None:
    assert parse_term_range("3..7") == (3, 7)
    assert parse_term_range("3..") == (3, None)
    assert parse_term_range("..7") == (None, 7)
    assert parse_term_range("5") == (5, 5)
    for bad in ("x..2", "7..3", "1..2..3"):
        with pytest.raises(ValueError):
            parse_term_range(bad)


def test_parse_time_bound_relative_and_iso() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_time_bound("5m", now) == "2026-01-01T11:55:00.000000Z"
    assert parse_time_bound("1h30m", now) == "2026-01-01T10:30:00.000000Z"
    assert parse_time_bound("500ms", now) == "2026-01-01T11:59:59.500000Z"
    assert parse_time_bound("2026-01-01T13:00:00+02:00") == "2026-01-01T11:00:00.000000Z"
    assert parse_time_bound("2026-01-01") == "2026-01-01T00:00:00.000000Z"
    with pytest.raises(ValueError):
        parse_time_bound("5 minutes")
    with pytest.raises(ValueError, match="year 1"):
        parse_time_bound("1000000d", now)  # before datetime's range: an error, not a crash


def test_normalize_timestamp() -> None:
    canonical = "2026-11-24T18:30:01.123456Z"
    assert normalize_timestamp(canonical) == canonical
    assert normalize_timestamp("2026-11-24T18:30:01Z") == "2026-11-24T18:30:01.000000Z"
    assert normalize_timestamp("yesterday") is None


def test_format_value() -> None:
    assert format_value("n1") == "n1"
    assert format_value("two words") == '"two words"'
    assert format_value("a=b") == '"a=b"'
    assert format_value(7) == "7"
    assert format_value(["n1", "n2"]) == '["n1","n2"]'
    assert format_value(None) == "null"


def test_parse_json_line() -> None:
    assert parse_json_line(b'{"a": 1}\r') == {"a": 1}
    assert parse_json_line('\ufeff{"a": 1}'.encode()) == {"a": 1}  # a file's byte-order mark
    assert parse_json_line(b'  {"a": 1}  ') == {"a": 1}
    for bad in (b"1 2", b'{"a": 1}x', b"{", b"", b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_json_line(bad)


def test_add_arguments_and_run_as_a_subcommand(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract the `zraft` CLI relies on: add_arguments on a subparser, then run(args)."""
    parser = argparse.ArgumentParser(prog="zraft")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("tail"))
    args = parser.parse_args(["tail", "--json", "--event", "vote_cast", str(cluster)])
    assert run(args) == 0
    assert [r["seq"] for r in json_out(capsys.readouterr().out)] == [5]


# ---------------------------------------------------------------- merge and output
def test_merge_order_and_backwards_lines_kept(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = cli(capsys, "--json", str(cluster))
    assert rc == 0
    seqs = [r["seq"] for r in json_out(out)]
    # A k-way merge of per-file order: n2's backwards line (seq 6) follows its file
    # neighbour, nothing is dropped or duplicated.
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "12 lines from 3 files, 12 shown, 0 unparseable" in err


def test_json_passthrough_is_byte_identical(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(capsys, "--json", "--node", "n3", str(cluster / "n3.jsonl"))
    assert rc == 0
    assert out == (cluster / "n3.jsonl").read_text()


def test_text_rendering(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, str(cluster))
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 12
    assert lines[0].split() == ["18:30:00.000000", "n1", "INFO", "node_started", "term=0", "seq=1"]
    assert "WARN" in lines[6] and "role=leader prev_role=candidate" in lines[6]
    assert 'voters=["n1","n2","n3"]' in lines[8]
    assert "\x1b[" not in out


def test_color_always_gives_each_node_its_colour(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--color", "always", str(cluster)])
    out = capsys.readouterr().out
    assert rc == 0
    colours = {}
    for line in out.splitlines():
        node_part = line.split(" ", 2)[1]  # "\x1b[36mn1  \x1b[0m" -> escape + node
        colours[node_part[node_part.index("m") + 1 :].split()[0]] = node_part[
            : node_part.index("m")
        ]
    assert set(colours) == {"n1", "n2", "n3"}
    assert len(set(colours.values())) == 3


def test_same_file_named_twice_is_read_once(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cli(
        capsys, "--json", str(cluster), str(cluster / "n1.log"), str(cluster / "*.log")
    )
    assert rc == 0
    seqs = [r["seq"] for r in json_out(out)]
    assert sorted(seqs) == list(range(1, 13))


def test_glob_selects_files(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "--json", str(cluster / "n[12].log"))
    assert rc == 0
    assert {r["node"] for r in json_out(out)} == {"n1", "n2"}


def test_missing_file_without_follow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "n1.log", [rec(0, "n1", "node_started")])
    rc, out, err = cli(capsys, str(tmp_path / "n1.log"), str(tmp_path / "nope.log"))
    assert rc == 1
    assert "node_started" in out
    assert "no such file" in err and "nope.log" in err


def test_unreadable_path_is_reported_not_hung_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    write(tmp_path / "n1.log", [rec(0, "n1", "ok", seq=1)])
    rc, out, err = cli(capsys, "--json", str(fifo), str(tmp_path / "n1.log"))
    assert rc == 1  # like a missing path: a script must not take it for a clean read
    assert [r["seq"] for r in json_out(out)] == [1]
    assert f"cannot read {fifo}: not a regular file" in err


def test_nothing_matched_without_follow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, str(tmp_path), str(tmp_path / "*.log"))
    assert rc == 1 and out == ""
    assert "no log files matched" in err


@pytest.mark.parametrize("argv", [["--term", "7..3"], ["--since", "soon"], ["--until", "5y"]])
def test_bad_arguments_exit_2(
    cluster: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    rc, out, err = cli(capsys, *argv, str(cluster))
    assert rc == 2 and out == "" and "error" in err


# ---------------------------------------------------------------- filters
def seqs_for(capsys: pytest.CaptureFixture[str], cluster: Path, *argv: str) -> list[int]:
    rc, out, _ = cli(capsys, "--json", *argv, str(cluster))
    assert rc == 0
    return [r["seq"] for r in json_out(out)]


def test_filter_node(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs_for(capsys, cluster, "--node", "n1,n3") == [1, 3, 4, 7, 9, 10, 12]
    assert seqs_for(capsys, cluster, "--node", "n1", "--node", "n2") == [
        1,
        2,
        4,
        5,
        6,
        7,
        8,
        10,
        11,
    ]


def test_filter_level(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs_for(capsys, cluster, "--level", "warning") == [6, 7, 12]
    assert seqs_for(capsys, cluster, "--level", "error") == [6, 12]
    assert len(seqs_for(capsys, cluster, "--level", "debug")) == 12


def test_filter_event_globs(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs_for(capsys, cluster, "--event", "snapshot_*") == [11, 12]
    assert seqs_for(capsys, cluster, "--event", "snapshot_*", "--event", "vote_cast") == [5, 11, 12]
    assert seqs_for(capsys, cluster, "--event", "*", "--exclude-event", "snapshot_sent") == list(
        range(1, 12)
    )
    assert seqs_for(capsys, cluster, "--exclude-event", "node_*", "--exclude-event", "commit") == [
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        11,
        12,
    ]


def test_filter_term(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs_for(capsys, cluster, "--term", "3..7") == [4, 5, 6, 7, 8, 9, 10]
    assert seqs_for(capsys, cluster, "--term", "8..") == [11, 12]
    assert seqs_for(capsys, cluster, "--term", "..2") == [1, 2, 3]
    assert seqs_for(capsys, cluster, "--term", "2") == [3]


def test_filter_since_until_iso(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since, until = (
        format_key(BASE + timedelta(milliseconds=40)),
        format_key(BASE + timedelta(milliseconds=90)),
    )
    # seq 6 (5 ms) is outside the range even though it sits between in-range lines.
    assert seqs_for(capsys, cluster, "--since", since, "--until", until) == [5, 7, 8, 9, 10]


def test_filter_since_until_relative(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    write(
        tmp_path / "n1.log",
        [
            rec(0, "n1", "old", base=now - timedelta(minutes=10), seq=1),
            rec(0, "n1", "recent", base=now - timedelta(seconds=20), seq=2),
        ],
    )
    assert seqs_for(capsys, tmp_path, "--since", "5m") == [2]
    assert seqs_for(capsys, tmp_path, "--until", "5m") == [1]
    assert seqs_for(capsys, tmp_path, "--since", "1h", "--until", "10s") == [1, 2]


def test_records_without_term_are_excluded_by_term_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.log", [rec(0, "n1", "x", seq=1), rec(1, "n1", "y", term=4, seq=2)])
    assert seqs_for(capsys, tmp_path, "--term", "1..") == [2]


# ---------------------------------------------------------------- timeline
def test_timeline(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "--timeline", str(cluster))
    assert rc == 0
    rows = out.splitlines()
    assert rows[0].split() == ["time", "term", "node", "what"]
    whats = [row.split(None, 3)[3] for row in rows[1:]]
    assert whats == [
        "n1 started",
        "n2 started",
        "n1 started election for term 3",
        "n2 voted for n1 in term 3",
        "n1 became leader (was candidate)",
        "n2 sees leader n1 (was -)",
        "membership: voters n1,n2,n3 learners n4 @9",
        "n2 installed snapshot @50 (2.0 KiB, 4 ms)",
        "n3 sent snapshot @50 (2.0 KiB) to n4",
    ]  # heartbeat_rtt, commit and clock_stepped_back are not part of the story
    assert rows[3].split()[:3] == ["18:30:00.030000", "3", "n1"]


def test_timeline_other_story_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path / "n1.log",
        [
            rec(0, "n1", "election_started", term=2, pre_vote=True),
            rec(1, "n1", "term_change", term=2, prev_term=1),
            rec(2, "n1", "member_added", term=2, member="n4"),
            rec(3, "n1", "learner_promoted", term=2, member="n4"),
            rec(4, "n1", "leader_transfer", term=2, target="n3"),
            rec(5, "n1", "leader_change", term=2, leader=None, prev_leader="n3"),
            rec(5.5, "n1", "leader_change", term=2, leader="", prev_leader="n2"),  # as logged
            rec(5.7, "n1", "leader_change", term=3, leader="n2", prev_leader=""),
            rec(6, "n1", "storage_torn_tail_cut", segment=3, offset_bytes=77),
            rec(7, "n1", "node_stopped"),
        ],
    )
    rc, out, _ = cli(capsys, "--timeline", "--node", "n1", str(tmp_path))
    assert rc == 0
    whats = [row.split(None, 3)[3] for row in out.splitlines()[1:]]
    assert whats == [
        "n1 started pre-vote for term 2",
        "n1 term 1 -> 2",
        "n1: member n4 added",
        "n1: learner n4 promoted",
        "n1 transfers leadership to n3",
        "n1 lost leader n3",
        "n1 lost leader n2",
        "n1 sees leader n2 (was -)",
        "n1 storage: torn tail cut segment=3 offset_bytes=77",
        "n1 stopped",
    ]
    assert out.splitlines()[-1].split()[1] == "-"  # no term known


# ---------------------------------------------------------------- garbage
def garbage_file(path: Path) -> int:
    """Writes a file full of bad lines between good ones; returns the number of bad lines."""
    bad: list[bytes] = [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"event": "no_timestamp", "node": "n1"}',
        b'{"timestamp": "yesterday", "event": "x"}',
        b'{"timestamp": 12345, "event": "x"}',
        b"\xff\xfe binary \x1b[31mred\x1b[0m",
        b"[" * 200_000,  # deep nesting: RecursionError inside json
        b"x" * (MAX_LINE_BYTES + 1000),  # oversized: cut, shown raw
        b'{"timestamp": "2026-11-24T18:30:00.5',  # torn line
    ]
    good = [rec(i, "n1", "ok", seq=i).encode() for i in range(len(bad) + 1)]
    body = b""
    for g, b in zip(good, bad, strict=False):
        body += g + b"\n" + b + b"\n\n   \n"
    body += good[-1]  # last line without a newline still counts
    path.write_bytes(body)
    return len(bad)


def test_garbage_is_shown_counted_never_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_bad = garbage_file(tmp_path / "n1.log")
    write(tmp_path / "n2.log", [rec(3.5, "n2", "ok", seq=100)])
    rc, out, err = cli(capsys, str(tmp_path))
    assert rc == 0
    lines = out.splitlines()
    marked = [line for line in lines if line.startswith("!! unparsed ")]
    assert len(marked) == n_bad
    assert any("not json at all" in line for line in marked)
    assert "\x1b" not in out  # escapes in garbage are shown escaped
    assert all(len(line) < 700 for line in marked)  # oversized lines are cut for display
    assert sum(" ok " in line for line in lines) == n_bad + 2
    # Raw lines keep their place right after their file neighbour.
    assert lines.index(next(m for m in marked if "not json" in m)) == 1
    assert f"{n_bad} unparseable ({tmp_path}/n1.log: {n_bad})" in err


def test_garbage_in_json_mode_keeps_stdout_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_bad = garbage_file(tmp_path / "n1.log")
    rc, out, err = cli(capsys, "--json", str(tmp_path))
    assert rc == 0
    assert [r["seq"] for r in json_out(out)] == list(range(n_bad + 1))
    assert err.count("!! unparsed ") == n_bad


# ---------------------------------------------------------------- follow mode
class Sink(io.StringIO):
    """A StringIO another thread can read while the tailer writes."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextmanager
def following(paths: list[Path], **kw: Any) -> Iterator[tuple[Tailer, Sink, Sink]]:
    options: dict[str, Any] = {"window_ms": 0, "poll_interval_s": 0.01, "rescan_interval_s": 0.02}
    options.update(kw)
    config = TailConfig(paths=[str(p) for p in paths], follow=True, mode="json", **options)
    out, err = Sink(), Sink()
    tailer = Tailer(config, out, err, threading.Event())
    thread = threading.Thread(target=tailer.run, daemon=True)
    thread.start()
    try:
        yield tailer, out, err
    finally:
        tailer.stop_event.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()


def seqs(sink: Sink) -> list[int]:
    return [r["seq"] for r in json_out(sink.text())]


def test_follow_file_created_after_start(tmp_path: Path) -> None:
    late, watched = tmp_path / "late.log", tmp_path / "dir"
    watched.mkdir()
    with following([late, watched]) as (_, out, _err):
        write(late, [rec(0, "n1", "a", seq=1)])
        wait_for(lambda: seqs(out) == [1], "the late file")
        write(watched / "n2.log", [rec(1, "n2", "b", seq=2)])
        wait_for(lambda: seqs(out) == [1, 2], "a new file in a watched directory")
        write(late, [rec(2, "n1", "c", seq=3)], mode="a")
        wait_for(lambda: seqs(out) == [1, 2, 3], "an append")


def test_follow_rotation(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    write(log, [rec(0, "n1", "a", seq=1), rec(1, "n1", "a", seq=2)])
    with following([tmp_path]) as (tailer, out, _err):
        wait_for(lambda: seqs(out) == [1, 2], "the first lines")
        os.rename(log, tmp_path / "n1-old.log")  # still matches the directory's patterns
        write(tmp_path / "n1-old.log", [rec(2, "n1", "late_write", seq=3)], mode="a")
        write(log, [rec(3, "n1", "b", seq=4), rec(4, "n1", "b", seq=5)])
        wait_for(lambda: seqs(out) == [1, 2, 3, 4, 5], "the rotated file")
        scans = tailer.stats.scans
        write(log, [rec(5, "n1", "c", seq=6)], mode="a")
        wait_for(lambda: tailer.stats.scans >= scans + 2, "a directory rescan")
        wait_for(lambda: seqs(out) == [1, 2, 3, 4, 5, 6], "an append after rotation")
    assert seqs(out) == [1, 2, 3, 4, 5, 6]  # n1-old.log was not read a second time
    assert tailer.stats.rotations == 1


def test_follow_truncation(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    write(log, [rec(i, "n1", "before", pad="x" * 50, seq=i) for i in range(3)])
    with following([log]) as (tailer, out, _err):
        wait_for(lambda: seqs(out) == [0, 1, 2], "the first lines")
        write(log, [rec(10, "n1", "after", seq=10)])  # truncate and write less than before
        wait_for(lambda: seqs(out) == [0, 1, 2, 10], "the truncated file")
        write(log, [rec(11, "n1", "after", seq=11)], mode="a")
        wait_for(lambda: seqs(out) == [0, 1, 2, 10, 11], "an append after truncation")
    assert tailer.stats.truncations == 1


def test_follow_reorder_window_orders_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.touch()
    b.touch()
    with following([a, b], window_ms=60_000) as (tailer, out, _err):
        write(b, [rec(2, "n2", "second", base=FUTURE, seq=2)])
        wait_for(lambda: tailer.stats.lines_read == 1, "the first line read")
        write(a, [rec(1, "n1", "first", base=FUTURE, seq=1)])
        # Every file has a head now, so the earliest one is surely next; the other is
        # held by the window (it comes out in the same write if it is not held).
        wait_for(lambda: out.text() != "", "the earlier line")
        assert seqs(out) == [1]
    assert seqs(out) == [1, 2]  # stopping flushes the held line


def test_follow_reorder_window_is_bounded(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    b.touch()
    write(a, [rec(i, "n1", "x", base=FUTURE, seq=i) for i in range(20)])
    with following([a, b], window_ms=60_000, max_pending_lines=5) as (_, out, _err):
        wait_for(lambda: len(seqs(out)) >= 15, "lines forced out of the full window")
        assert seqs(out) == list(range(15))
    assert seqs(out) == list(range(20))


def test_follow_old_lines_are_not_held(tmp_path: Path) -> None:
    """Lines far older than the window (catch-up) flow even when another file is idle."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    b.touch()
    write(a, [rec(i, "n1", "x", seq=i) for i in range(3)])
    with following([a, b], window_ms=60_000) as (_, out, _err):
        wait_for(lambda: seqs(out) == [0, 1, 2], "old lines")


def test_follow_live_lines_leave_the_window_by_age(tmp_path: Path) -> None:
    """Fresh lines are held while another file is idle, then released (no stop needed)."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    b.touch()
    with following([a, b], window_ms=200) as (_, out, _err):
        write(a, [rec(0, "n1", "live", base=datetime.now(UTC), seq=1)])
        wait_for(lambda: seqs(out) == [1], "the held line to be released")


def test_follow_from_end_skips_existing_lines(tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    write(log, [rec(0, "n1", "old", seq=1)])
    with following([tmp_path], from_end=True) as (tailer, out, _err):
        wait_for(lambda: tailer.stats.files == 1, "the file to be opened at its end")
        write(log, [rec(1, "n1", "new", seq=2)], mode="a")
        write(tmp_path / "n2.log", [rec(2, "n2", "new_file", seq=3)])  # new files: in full
        wait_for(lambda: seqs(out) == [2, 3], "the new lines")


def test_follow_stops_after_max_idle(tmp_path: Path) -> None:
    write(tmp_path / "n1.log", [rec(0, "n1", "a", seq=1)])
    config = TailConfig(
        paths=[str(tmp_path)], follow=True, mode="json", max_idle_s=0.2, poll_interval_s=0.01
    )
    out, err = Sink(), Sink()
    thread = threading.Thread(target=Tailer(config, out, err).run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert seqs(out) == [1]
    assert "1 lines from 1 files, 1 shown" in err.text()


# ---------------------------------------------------------------- the runnable wrapper
def test_tools_wrapper_subprocess(cluster: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "zraft_tail.py"), "--timeline", str(cluster)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["time", "term", "node", "what"]
    assert "n1 became leader (was candidate)" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a TTY: no colour
    assert "12 lines from 3 files" in proc.stderr


def test_follow_shows_a_last_line_without_a_newline_when_it_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -f the last line counts once the file is done; with -f it waited for its
    newline and was dropped when following stopped (found in review)."""
    path = tmp_path / "n1.log"
    path.write_text(rec(0, "n1", "first") + "\n" + rec(1, "n1", "last_no_newline"))
    for extra in ((), ("-f", "--max-idle", "0.3")):
        rc, out, _ = cli(capsys, "--json", *extra, str(path))
        assert rc == 0
        assert [r["event"] for r in json_out(out)] == ["first", "last_no_newline"], extra
