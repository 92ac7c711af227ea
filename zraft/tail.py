"""``zraft tail``: follow, merge, filter and render the JSON-lines logs of zraft nodes.

Each node writes one structlog JSON-lines file. This tool reads many of them at
once (files, directories, globs; files may not exist yet, may rotate or be
truncated), merges them in timestamp order and prints a readable line per
record, the records as JSON lines (``--json``), or only the cluster story as a
compact table (``--timeline``).

Ordering: timestamps are normalised to one canonical UTC string form, so every
comparison is a plain string comparison. Each file is a queue; the merge only
ever pops the head of a queue, so lines within one file keep their file order
(a file whose clock steps backwards is printed in full, never dropped). When
following, a head is held back for up to ``window_ms`` while some other file has
nothing queued, so near-simultaneous lines from different files come out in
order; ``max_pending_lines`` bounds what is held.

Robustness: an unparseable line (not JSON, not an object, no usable timestamp,
oversized) is shown raw with a ``!!`` marker and counted; a summary goes to
stderr at exit.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, TextIO

# ---------------------------------------------------------------- limits
CHUNK_BYTES = 256 * 1024  # one read per file per round
MAX_LINE_BYTES = 1024 * 1024  # longer lines are cut and shown raw
MAX_FILES = 256  # files followed at once
MAX_RAW_SHOWN_CHARS = 500  # of an unparseable line
MAX_RETIRED_INODES = 4096  # rotated-away files remembered (to skip re-reading them)
MAX_EVENT_CACHE = 4096  # memoised event-glob results
MAX_PENDING_LINES = 50_000  # held in the reorder window when following

LEVELS: dict[str, int] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "exception": 40,
    "critical": 50,
    "fatal": 50,
}
UNKNOWN_LEVEL = 20  # a record with a strange level counts as info

TIMELINE_EVENTS = frozenset(
    {
        "node_started",
        "node_stopped",
        "election_started",
        "vote_cast",
        "role_change",
        "term_change",
        "leader_change",
        "membership_change",
        "member_added",
        "member_removed",
        "learner_promoted",
        "leader_transfer",
        "snapshot_taken",
        "snapshot_sent",
        "snapshot_installed",
        "storage_torn_tail_cut",
        "storage_repaired",
    }
)
DIR_SUFFIXES = (".log", ".jsonl", ".json")
_CORE_KEYS = frozenset({"timestamp", "level", "event", "node"})
_GLOB_MAGIC = frozenset("*?[")


# ---------------------------------------------------------------- time and ranges
def format_key(dt: datetime) -> str:
    """The canonical sort key: UTC, microseconds, ``Z`` (what structlog writes)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_timestamp(ts: str) -> str | None:
    """Canonical key for an ISO 8601 timestamp, or None if it is not one.

    The fast path accepts the exact structlog shape without parsing: that is the
    per-line cost that matters under load.
    """
    if len(ts) == 27 and ts[26] == "Z" and ts[10] == "T" and ts[19] == "." and ts[4] == "-":
        return ts
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_key(dt)


_REL_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_REL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_REL_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_time_bound(text: str, now: datetime | None = None) -> str:
    """``--since``/``--until`` value to a key: ISO time, or an age such as ``5m``, ``1h30m``."""
    s = text.strip()
    if _REL_FULL.fullmatch(s):
        age_s = sum(float(n) * _REL_UNITS_S[u] for n, u in _REL_PART.findall(s))
        try:
            return format_key((now or datetime.now(UTC)) - timedelta(seconds=age_s))
        except OverflowError:
            raise ValueError(f"{text!r} reaches before the year 1") from None
    key = normalize_timestamp(s)
    if key is None:
        raise ValueError(f"not an ISO time or a relative age like 5m/30s: {text!r}")
    return key


def parse_term_range(text: str) -> tuple[int | None, int | None]:
    """``3..7``, ``3..``, ``..7`` or ``5`` to inclusive (min, max); None is an open end."""
    s = text.strip()
    lo_s, sep, hi_s = s.partition("..")
    if not sep:
        hi_s = lo_s
    try:
        lo = int(lo_s) if lo_s.strip() else None
        hi = int(hi_s) if hi_s.strip() else None
    except ValueError:
        raise ValueError(f"term range must look like 3..7, 3.., ..7 or 5: {text!r}") from None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"empty term range: {text!r}")
    return lo, hi


# ---------------------------------------------------------------- filtering
@dataclass(slots=True)
class RecordFilter:
    """Which parsed records to show. Cheap checks first; event globs are memoised."""

    nodes: frozenset[str] | None = None
    min_level: int = 0
    include_events: tuple[str, ...] = ()
    exclude_events: tuple[str, ...] = ()
    term_min: int | None = None
    term_max: int | None = None
    since_key: str | None = None
    until_key: str | None = None
    timeline_only: bool = False
    _event_cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def event_ok(self, event: str) -> bool:
        """Event names are few, so each glob decision is made once per name."""
        ok = self._event_cache.get(event)
        if ok is None:
            ok = (not self.timeline_only or event in TIMELINE_EVENTS) and (
                not self.include_events or any(fnmatchcase(event, p) for p in self.include_events)
            )
            ok = ok and not any(fnmatchcase(event, p) for p in self.exclude_events)
            if len(self._event_cache) >= MAX_EVENT_CACHE:
                self._event_cache.clear()
            self._event_cache[event] = ok
        return ok

    def matches(self, rec: dict[str, Any], key: str) -> bool:
        """True if the record passes every filter; ``key`` is its canonical timestamp."""
        if self.since_key is not None and key < self.since_key:
            return False
        if self.until_key is not None and key > self.until_key:
            return False
        if self.nodes is not None and rec.get("node") not in self.nodes:
            return False
        if self.min_level:
            level = rec.get("level")
            rank = LEVELS.get(level, UNKNOWN_LEVEL) if isinstance(level, str) else UNKNOWN_LEVEL
            if rank < self.min_level:
                return False
        if self.term_min is not None or self.term_max is not None:
            term = rec.get("term")
            if type(term) is not int:
                return False
            if (self.term_min is not None and term < self.term_min) or (
                self.term_max is not None and term > self.term_max
            ):
                return False
        return self.event_ok(str(rec.get("event", "")))


# ---------------------------------------------------------------- one file
# Not in the type stubs, but a documented-by-source, stable attribute of the decoder.
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_json_line(raw: bytes) -> Any:
    """Decode one JSON line or raise ValueError/RecursionError.

    Calls the C scanner directly: the json.loads wrappers cost about a third of
    the parse time, and this is the per-line hot path.
    """
    s = raw.decode("utf-8")
    if s.startswith("\ufeff"):  # a file written with a byte-order mark: its first line
        s = s[1:]
    try:
        obj, end = _SCAN_ONCE(s, 0)
    except StopIteration:
        return json.loads(s)  # leading whitespace, or garbage: let loads judge it
    if end != len(s) and not s[end:].isspace():
        raise ValueError("data after the JSON value")
    return obj


class Line:
    """One line read from a file: parsed record (None if unparseable) plus its sort key."""

    __slots__ = ("arrival", "key", "raw", "rec", "src")

    def __init__(
        self, key: str, rec: dict[str, Any] | None, raw: bytes, src: str, arrival: float
    ) -> None:
        self.key = key
        self.rec = rec
        self.raw = raw
        self.src = src
        self.arrival = arrival


@dataclass(slots=True)
class TailStats:
    """Counters for the exit summary (and for tests that wait on progress)."""

    lines_read: int = 0
    shown: int = 0
    unparsed: int = 0
    unparsed_by_file: dict[str, int] = field(default_factory=dict)
    rotations: int = 0
    truncations: int = 0
    files: int = 0
    scans: int = 0


class FileFollower:
    """Reads whole lines from one path; notices rotation (new inode) and truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: deque[Line] = deque()
        self.eof = False  # the last read returned nothing
        self.last_key = ""  # key given to unparseable lines: they sort after their neighbour
        self.inode: tuple[int, int] | None = None
        self._fd: int | None = None
        self._pos = 0
        self._partial = b""
        self._skipping = False  # discarding the rest of an oversized line
        self._rotating = False  # a new file is at our path; drain the old one first
        self.open_error: str | None = None  # why the path exists but cannot be read

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> bool:
        try:
            # O_NONBLOCK: opening a FIFO must not hang the loop (it is refused below).
            flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.open_error = e.strerror or type(e).__name__
            return False
        self.open_error = None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self.open_error = "not a regular file"
            return False
        self._fd, self.inode, self._pos = fd, (st.st_dev, st.st_ino), 0
        self._partial, self._skipping, self._rotating = b"", False, False
        return True

    def skip_to_end(self) -> None:
        """Start at the current end (like ``tail -n 0``): only new lines are wanted."""
        if self._fd is None and self._open():
            assert self._fd is not None
            self._pos = os.lseek(self._fd, 0, os.SEEK_END)

    def read_lines(self, max_bytes: int, follow: bool, stats: TailStats) -> list[bytes]:
        """Complete lines newly available (at most ``max_bytes`` read). Never raises on I/O."""
        if self._fd is None and not self._open():
            self.eof = True
            return []
        assert self._fd is not None
        try:
            data = os.read(self._fd, max_bytes)
        except OSError:
            data = b""
        if data:
            self.eof = False
            self._pos += len(data)
            return self._split(data)
        self.eof = True
        if not follow:
            return self.flush_partial()
        return self._check_replaced(stats)

    def _check_replaced(self, stats: TailStats) -> list[bytes]:
        """At EOF while following: reopen on truncation or rotation."""
        assert self._fd is not None
        if os.fstat(self._fd).st_size < self._pos:
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._pos, self._partial, self._skipping = 0, b"", False
            self.eof = False
            stats.truncations += 1
            return []
        try:
            st = os.stat(self.path)
        except OSError:
            return []  # renamed away, not recreated yet: keep reading the old file
        if (st.st_dev, st.st_ino) == self.inode:
            return []
        if not self._rotating:
            self._rotating = True  # one more read of the old file before switching
            self.eof = False
            return []
        lines = self.flush_partial()
        self.close()
        stats.rotations += 1
        self._open()
        self.eof = False
        return lines

    def _split(self, data: bytes) -> list[bytes]:
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            data, self._skipping = data[nl + 1 :], False
        if b"\n" not in data:
            self._partial += data
            return self._cut_oversized()
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return lines + self._cut_oversized()

    def _cut_oversized(self) -> list[bytes]:
        """Bound memory: an endless line is emitted cut (it will show as unparseable)."""
        if len(self._partial) <= MAX_LINE_BYTES:
            return []
        cut, self._partial, self._skipping = self._partial[:MAX_LINE_BYTES], b"", True
        return [cut]

    def flush_partial(self) -> list[bytes]:
        """A last line without a newline is still a line once the file is done."""
        tail, self._partial = self._partial, b""
        return [tail] if tail else []

    def ingest(self, raw_lines: list[bytes], arrival: float, stats: TailStats) -> None:
        """Parse lines into the queue. Bulk loop: one JSON decode per line, no regexes."""
        loads, queue, src = parse_json_line, self.queue, self.path
        bad = blank = 0
        for raw in raw_lines:
            if not raw or raw.isspace():
                blank += 1
                continue
            try:
                rec = loads(raw)
            except (ValueError, RecursionError):
                rec = None
            key = None
            if type(rec) is dict:
                ts = rec.get("timestamp")
                if type(ts) is str:
                    key = normalize_timestamp(ts)
            if key is None:
                bad += 1
                queue.append(Line(self.last_key, None, raw, src, arrival))
            else:
                self.last_key = key
                queue.append(Line(key, rec, raw, src, arrival))
        stats.lines_read += len(raw_lines) - blank
        if bad:
            stats.unparsed += bad
            stats.unparsed_by_file[src] = stats.unparsed_by_file.get(src, 0) + bad


# ---------------------------------------------------------------- rendering
_RESET = "\x1b[0m"
_NODE_COLOURS = ("36", "32", "35", "34", "33", "96", "92", "95", "94", "93")
_LEVEL_STYLE = {
    "debug": ("DEBUG", "2"),
    "info": ("INFO ", ""),
    "warning": ("WARN ", "33"),
    "warn": ("WARN ", "33"),
    "error": ("ERROR", "31"),
    "exception": ("ERROR", "31"),
    "critical": ("CRIT ", "1;31"),
    "fatal": ("CRIT ", "1;31"),
}


_STR_CACHE: dict[str, str] = {}  # values repeat a lot (roles, node ids); bounded below


def format_value(v: Any) -> str:
    """key=value friendly: bare words stay bare, everything else is compact JSON."""
    t = type(v)
    if t is str:
        out = _STR_CACHE.get(v)
        if out is None:
            bare = v and v.isprintable() and " " not in v and "=" not in v and '"' not in v
            out = v if bare else json.dumps(v, ensure_ascii=False)
            if len(v) <= 64 and len(_STR_CACHE) < MAX_EVENT_CACHE:
                _STR_CACHE[v] = out
        return out
    if t is int:
        return str(v)
    if t is float:
        return repr(v)
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str)


def sanitize_raw(raw: bytes) -> str:
    """Garbage may hold terminal escapes: show it escaped and cut."""
    text = raw[: MAX_RAW_SHOWN_CHARS * 4].decode("utf-8", "replace").rstrip("\r\n")
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > MAX_RAW_SHOWN_CHARS:
        text = text[:MAX_RAW_SHOWN_CHARS] + "..."
    return text


class Renderer:
    """Turns records into output text: readable lines, a timeline table or JSON lines."""

    def __init__(self, mode: str, color: bool) -> None:
        assert mode in ("text", "json", "timeline")
        self.mode = mode
        self.color = color
        self._node_colour: dict[str, str] = {}

    def _paint(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}{_RESET}" if self.color and sgr else text

    def _node(self, node: str, width: int) -> str:
        padded = node.ljust(width)
        if not self.color:
            return padded
        sgr = self._node_colour.get(node)
        if sgr is None:
            if len(self._node_colour) >= 1024:
                self._node_colour.clear()
            sgr = _NODE_COLOURS[len(self._node_colour) % len(_NODE_COLOURS)]
            self._node_colour[node] = sgr
        return self._paint(padded, sgr)

    def header(self) -> str:
        return "time             term  node  what\n" if self.mode == "timeline" else ""

    def record(self, rec: dict[str, Any], line: Line) -> str:
        if self.mode == "json":
            return line.raw.rstrip(b"\r").decode("utf-8", "replace") + "\n"
        node = str(rec.get("node", "-"))
        if self.mode == "timeline":
            term = rec.get("term")
            term_s = str(term) if term is not None else "-"
            what = describe_event(rec)
            return f"{line.key[11:26]}  {term_s:>4}  {self._node(node, 4)}  {what}\n"
        return self._text(rec, line.key, node)

    def _text(self, rec: dict[str, Any], key: str, node: str) -> str:
        level = rec.get("level")
        label, sgr = (
            _LEVEL_STYLE.get(level, ("?    ", "")) if isinstance(level, str) else ("?    ", "")
        )
        fields = " ".join(f"{k}={format_value(v)}" for k, v in rec.items() if k not in _CORE_KEYS)
        event = str(rec.get("event", "-")).ljust(20)
        if self.color:
            event = self._paint(event, "1")
        out = f"{key[11:26]} {self._node(node, 4)} {self._paint(label, sgr)} {event}"
        return f"{out} {fields}\n" if fields else f"{out.rstrip()}\n"

    def unparsed(self, line: Line) -> str:
        return f"!! unparsed {line.src}: {sanitize_raw(line.raw)}\n"


def _size(n: Any) -> str:
    if type(n) is not int:
        return "?"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024.0
        if size < 1024.0 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _names(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v) or "-"
    return "-" if v is None or v == "" else str(v)


def _who(rec: dict[str, Any]) -> str:
    for k in ("member", "member_id", "peer", "target", "learner", "node_id", "id"):
        if k in rec:
            return str(rec[k])
    return "?"


def _snap(rec: dict[str, Any]) -> str:
    bits = [f"@{rec.get('index', '?')}", _size(rec.get("size"))]
    if "duration_ms" in rec:
        bits.append(f"{rec['duration_ms']} ms")
    return f"{bits[0]} ({', '.join(bits[1:])})"


def _rest(rec: dict[str, Any], skip: Iterable[str]) -> str:
    drop = _CORE_KEYS | {"term", "role"} | set(skip)
    parts = [f"{k}={format_value(v)}" for k, v in rec.items() if k not in drop]
    return (" " + " ".join(parts)) if parts else ""


def describe_event(rec: dict[str, Any]) -> str:
    """One human phrase per cluster-story event (unknown events fall back to key=value)."""
    g = rec.get
    n = str(g("node", "?"))
    match g("event"):
        case "node_started":
            return f"{n} started"
        case "node_stopped":
            return f"{n} stopped"
        case "election_started":
            kind = "pre-vote" if g("pre_vote") else "election"
            return f"{n} started {kind} for term {g('term', '?')}"
        case "vote_cast":
            return f"{n} voted for {g('candidate', '?')} in term {g('term', '?')}"
        case "role_change":
            was = f" (was {g('prev_role')})" if g("prev_role") else ""
            return f"{n} became {g('role', '?')}{was}"
        case "term_change":
            return f"{n} term {g('prev_term', '?')} -> {g('term', '?')}"
        case "leader_change":
            if not g("leader"):  # nodes log "" for no leader
                return f"{n} lost leader {_names(g('prev_leader')) if g('prev_leader') else '?'}"
            return f"{n} sees leader {g('leader')} (was {_names(g('prev_leader'))})"
        case "membership_change":
            learners = f" learners {_names(g('learners'))}" if g("learners") else ""
            at = f" @{g('index')}" if "index" in rec else ""
            return f"membership: voters {_names(g('voters'))}{learners}{at}"
        case "member_added" | "member_removed" | "learner_promoted" as ev:
            verb = {"member_added": "added", "member_removed": "removed"}.get(ev, "promoted")
            kind = "learner" if ev == "learner_promoted" else "member"
            keys = ("member", "member_id", "peer", "target", "learner", "node_id", "id")
            return f"{n}: {kind} {_who(rec)} {verb}{_rest(rec, keys)}"
        case "leader_transfer":
            return f"{n} transfers leadership to {g('target', '?')}"
        case "snapshot_taken":
            return f"{n} took snapshot {_snap(rec)}"
        case "snapshot_sent":
            return f"{n} sent snapshot {_snap(rec)} to {g('to', '?')}"
        case "snapshot_installed":
            return f"{n} installed snapshot {_snap(rec)}"
        case "storage_torn_tail_cut":
            return f"{n} storage: torn tail cut{_rest(rec, ())}"
        case "storage_repaired":
            return f"{n} storage repaired{_rest(rec, ())}"
        case other:
            return f"{n} {other}{_rest(rec, ())}"


# ---------------------------------------------------------------- discovery
def _has_magic(spec: str) -> bool:
    return any(c in _GLOB_MAGIC for c in spec)


def discover(specs: Sequence[str]) -> list[str]:
    """Expand files, directories (their *.log/*.jsonl/*.json) and globs, in a stable order.

    Plain paths are kept even if missing, so a follower can wait for them.
    """
    found: list[str] = []
    for spec in specs:
        if _has_magic(spec):
            found.extend(p for p in sorted(glob.glob(spec)) if os.path.isfile(p))
        elif os.path.isdir(spec):
            try:
                names = sorted(os.listdir(spec))
            except OSError:
                continue
            found.extend(
                os.path.join(spec, name)
                for name in names
                if name.endswith(DIR_SUFFIXES) and os.path.isfile(os.path.join(spec, name))
            )
        else:
            found.append(spec)
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------- the loop
@dataclass(slots=True)
class TailConfig:
    """Everything the tailer needs; the CLI builds one from its arguments."""

    paths: list[str]
    follow: bool = False
    mode: str = "text"  # "text" | "json" | "timeline"
    color: bool = False
    record_filter: RecordFilter = field(default_factory=RecordFilter)
    window_ms: int = 200
    max_pending_lines: int = MAX_PENDING_LINES
    poll_interval_s: float = 0.05
    rescan_interval_s: float = 0.5
    max_idle_s: float | None = None  # following stops after this long without new lines
    from_end: bool = False  # skip what the files hold at start (follow mode)
    summary: bool = True
    chunk_bytes: int = CHUNK_BYTES


class Tailer:
    """Reads, merges, filters and writes. ``run`` returns the exit code.

    Stop a follower from another thread with ``stop_event.set()``: pending lines
    are flushed, the summary written, and ``run`` returns.
    """

    def __init__(
        self,
        config: TailConfig,
        out: TextIO,
        err: TextIO,
        stop_event: threading.Event | None = None,
    ) -> None:
        assert config.mode in ("text", "json", "timeline")
        assert config.chunk_bytes > 0 and config.max_pending_lines > 0 and config.window_ms >= 0
        self.config = config
        self.out = out
        self.err = err
        self.stop_event = stop_event or threading.Event()
        self.stats = TailStats()
        self.renderer = Renderer(config.mode, config.color)
        self._followers: list[FileFollower] = []
        self._by_path: dict[str, FileFollower] = {}
        self._retired: dict[tuple[int, int], None] = {}
        self._pending = 0
        self._missing: list[str] = []
        self._warned_max_files = False
        self.broken_pipe = False

    # -- sources
    def _rescan(self) -> None:
        """Pick up new files; skip any already followed under another name (by inode)."""
        self.stats.scans += 1
        known = {f.inode for f in self._followers if f.inode is not None}
        for path in discover(self.config.paths):
            if path in self._by_path:
                continue
            try:
                st = os.stat(path)
                ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
                if not self.config.follow:
                    if path not in self._missing:
                        self._missing.append(path)
                    continue
            if ident is not None and (ident in known or ident in self._retired):
                continue
            if len(self._followers) >= MAX_FILES:
                if not self._warned_max_files:
                    self.err.write(f"zraft tail: following at most {MAX_FILES} files\n")
                    self._warned_max_files = True
                return
            self._add(path, ident, known)

    def _add(self, path: str, ident: tuple[int, int] | None, known: set[tuple[int, int]]) -> None:
        follower = FileFollower(path)
        if self.config.from_end and self.stats.scans == 1:
            follower.skip_to_end()  # files there at start; later ones are read in full
        self._followers.append(follower)
        self._by_path[path] = follower
        self.stats.files = len(self._followers)
        if ident is not None:
            known.add(ident)

    def _retire(self, inode: tuple[int, int] | None) -> None:
        """Remember a rotated-away file so a directory scan does not read it again."""
        if inode is None:
            return
        if len(self._retired) >= MAX_RETIRED_INODES:
            del self._retired[next(iter(self._retired))]
        self._retired[inode] = None

    # -- reading
    def _fill(self) -> int:
        """Read one chunk from every file whose queue is empty; returns lines read."""
        now = time.monotonic()
        got = 0
        for f in self._followers:
            if f.queue or (f.eof and not self.config.follow):
                continue
            before = f.inode
            raw = f.read_lines(self.config.chunk_bytes, self.config.follow, self.stats)
            if f.inode != before:
                self._retire(before)
            got += self._ingest(f, raw, now)
        return got

    def _ingest(self, f: FileFollower, raw: list[bytes], now: float) -> int:
        """Queue a follower's new lines; returns how many were queued (bad ones are not)."""
        if not raw:
            return 0
        n = len(f.queue)
        f.ingest(raw, now, self.stats)
        self._pending += len(f.queue) - n
        return len(f.queue) - n

    def _flush_partials(self) -> None:
        """Following ends: a last line still waiting for its newline is a line too."""
        now = time.monotonic()
        for f in self._followers:
            self._ingest(f, f.flush_partial(), now)

    def _drain(self, final: bool) -> list[Line]:
        """K-way merge of queue heads; while following, hold young heads (see module doc)."""
        cfg = self.config
        window_s = cfg.window_ms / 1000.0
        mono_cutoff = time.monotonic() - window_s
        wall_cutoff = format_key(datetime.now(UTC) - timedelta(seconds=window_s))
        out: list[Line] = []
        while True:
            best: FileFollower | None = None
            best_key = second_key = None
            waiting = False
            for f in self._followers:
                if f.queue:
                    k = f.queue[0].key
                    if best_key is None or k < best_key:
                        second_key, best, best_key = best_key, f, k
                    elif second_key is None or k < second_key:
                        second_key = k
                elif not f.eof and not final:
                    return out  # this file may hold the next line: read it first
                elif cfg.follow:
                    waiting = True
            if best is None:
                return out
            hold = waiting and not final
            q = best.queue
            while q:
                line = q[0]
                if second_key is not None and line.key > second_key:
                    break
                if (
                    hold
                    and self._pending <= cfg.max_pending_lines
                    and line.arrival > mono_cutoff
                    and line.key > wall_cutoff
                ):
                    return out
                q.popleft()
                self._pending -= 1
                out.append(line)

    # -- writing
    def _emit(self, lines: list[Line]) -> None:
        if not lines:
            return
        flt, render = self.config.record_filter, self.renderer
        parts: list[str] = []
        raws: list[str] = []
        for line in lines:
            rec = line.rec
            if rec is None:
                (parts if render.mode == "text" else raws).append(render.unparsed(line))
            elif flt.matches(rec, line.key):
                parts.append(render.record(rec, line))
        self.stats.shown += len(parts) + len(raws)
        if parts:
            self.out.write("".join(parts))
            if self.config.follow:
                self.out.flush()
        if raws:
            self.err.write("".join(raws))

    def _summary(self) -> None:
        s = self.stats
        msg = f"zraft tail: {s.lines_read} lines from {s.files} files, {s.shown} shown"
        msg += f", {s.unparsed} unparseable"
        if s.unparsed_by_file:
            msg += " (" + ", ".join(f"{p}: {c}" for p, c in s.unparsed_by_file.items()) + ")"
        if s.rotations or s.truncations:
            msg += f", {s.rotations} rotations, {s.truncations} truncations"
        self.err.write(msg + "\n")
        for path in self._missing:
            self.err.write(f"zraft tail: no such file: {path}\n")
        for f in self._followers:
            if f.open_error:
                self.err.write(f"zraft tail: cannot read {f.path}: {f.open_error}\n")
        if self._nothing_found():
            self.err.write("zraft tail: no log files matched\n")

    def _nothing_found(self) -> bool:
        """Without --follow, an empty directory or a glob matching nothing is an error."""
        return not self.config.follow and not self._followers and not self._missing

    def run(self) -> int:
        """Read (and follow) until done or stopped; 1 if a named path was missing or could
        not be read (a FIFO, a directory's unreadable file), or nothing matched."""
        try:
            self._loop()
        except BrokenPipeError:
            self.broken_pipe = True  # the reader (e.g. `head`) went away: not an error
            return 0
        except KeyboardInterrupt:
            self._flush_partials()
            self._emit(self._drain(final=True))
        finally:
            for f in self._followers:
                f.close()
        if self.config.summary:
            self._summary()
        unreadable = any(f.open_error for f in self._followers)
        return 1 if self._missing or unreadable or self._nothing_found() else 0

    def _loop(self) -> None:
        cfg = self.config
        self._rescan()
        self.out.write(self.renderer.header())
        last_data = last_scan = time.monotonic()
        while True:
            got = self._fill()
            self._emit(self._drain(final=False))
            if not cfg.follow:
                if all(f.eof and not f.queue for f in self._followers):
                    return
                continue
            now = time.monotonic()
            if got:
                last_data = now
            if self.stop_event.is_set() or (
                cfg.max_idle_s is not None and now - last_data >= cfg.max_idle_s
            ):
                self._flush_partials()
                self._emit(self._drain(final=True))
                return
            if now - last_scan >= cfg.rescan_interval_s:
                self._rescan()
                last_scan = now
            if not got:
                self.stop_event.wait(cfg.poll_interval_s)


# ---------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``zraft tail`` (shared by the ``zraft`` CLI and tools/zraft_tail.py)."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="log files, directories, globs")
    parser.add_argument("-f", "--follow", action="store_true", help="keep following the files")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print matching records as JSON lines")
    mode.add_argument("--timeline", action="store_true", help="only the cluster story, as a table")
    parser.add_argument("--node", action="append", default=[], help="only these nodes: n1,n2")
    parser.add_argument("--level", choices=sorted(LEVELS), help="minimum level")
    parser.add_argument("--event", action="append", default=[], help="event glob (repeatable)")
    parser.add_argument("--exclude-event", action="append", default=[], help="event glob to hide")
    parser.add_argument("--term", help="term range: 3..7, 3.., ..7 or 5")
    parser.add_argument("--since", help="ISO time or age (5m, 30s, 1h30m)")
    parser.add_argument("--until", help="ISO time or age (5m, 30s, 1h30m)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--window-ms", type=int, default=200, help="reorder window (follow)")
    parser.add_argument("--max-idle", type=float, metavar="SECONDS", help="stop following after")
    parser.add_argument(
        "--from-end", action="store_true", help="with -f: only lines written after start"
    )
    parser.add_argument("--no-summary", action="store_true", help="no count summary on stderr")


def _use_color(choice: str, out: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    isatty: Callable[[], bool] | None = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


def config_from_args(args: argparse.Namespace, out: TextIO) -> TailConfig:
    """Raises ValueError with a user-facing message for a bad --term/--since/--until."""
    nodes = {n.strip() for spec in args.node for n in spec.split(",") if n.strip()}
    term_min, term_max = parse_term_range(args.term) if args.term else (None, None)
    now = datetime.now(UTC)
    flt = RecordFilter(
        nodes=frozenset(nodes) if nodes else None,
        min_level=LEVELS[args.level] if args.level else 0,
        include_events=tuple(args.event),
        exclude_events=tuple(args.exclude_event),
        term_min=term_min,
        term_max=term_max,
        since_key=parse_time_bound(args.since, now) if args.since else None,
        until_key=parse_time_bound(args.until, now) if args.until else None,
        timeline_only=args.timeline,
    )
    if args.window_ms < 0:
        raise ValueError("--window-ms must be >= 0")
    return TailConfig(
        paths=list(args.paths),
        follow=args.follow,
        mode="json" if args.json else "timeline" if args.timeline else "text",
        color=_use_color(args.color, out) and not args.json,
        record_filter=flt,
        window_ms=args.window_ms,
        max_idle_s=args.max_idle,
        summary=not args.no_summary,
        from_end=args.from_end and args.follow,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for ``zraft tail``; returns the exit code (2 on a bad argument)."""
    try:
        config = config_from_args(args, sys.stdout)
    except ValueError as e:
        sys.stderr.write(f"zraft tail: error: {e}\n")
        return 2
    tailer = Tailer(config, sys.stdout, sys.stderr)
    rc = tailer.run()
    if tailer.broken_pipe:
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zraft tail", description="Follow, merge, filter and render zraft node logs."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
