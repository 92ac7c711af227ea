"""Storage: the durable state of one node (log, hard state, snapshots) in one data dir.

Layout of ``data_dir``::

    LOCK          flock'd while open (one Storage per directory)
    hardstate     term, vote, bootstrap membership (atomic replace, checksummed)
    log/          <first index>.seg segments (+ .idx sidecars), TRUNCATE marker
    snapshots/    snap-<term>-<index>.snap files, staging-*.part while receiving

Threading: everything runs on the reactor thread except :meth:`Storage.write_snapshot`,
which may run on a helper thread; it touches only snapshot files and publishes
the new metadata under the snapshot store's lock.

Failure: an OSError while writing (ENOSPC, EIO) puts the storage in a failed,
read-only state: later writes raise :class:`StorageFailed` carrying the reason,
reads keep working. :meth:`Storage.recover_writes` re-reads everything from disk
(never trusting page-cache state after a failed fsync) and lifts the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import structlog

from zraft.core.types import Entry, HardState, Membership, SnapshotMeta
from zraft.metrics import Histogram
from zraft.storage import fileutil, hardstate
from zraft.storage import records as rec
from zraft.storage.errors import (
    AlreadyBootstrapped,
    CorruptHardState,
    CorruptLog,
    DataDirLocked,
    DataDirMismatch,
    StorageFailed,
)
from zraft.storage.log import SegmentLog
from zraft.storage.recovery import recover
from zraft.storage.snapshots import SnapshotStore

log = structlog.get_logger("zraft.storage")

FSYNC_MODES = ("always", "never")
MIN_SEGMENT_BYTES = 64
MAX_SEGMENT_BYTES = 1 << 32
MAX_RECORD_LIMIT = 1 << 30
MAX_KEEP_SNAPSHOTS = 1000
#: one log record (an entry and its 28-byte header): the node caps commands below it
DEFAULT_MAX_RECORD_BYTES = 16 << 20
LOG_DIR = "log"
SNAP_DIR = "snapshots"
#: present while a re-provisioned node waits to apply the entry that added it (holds
#: that index, or nothing while it is unknown); see zraft.core.raft.Raft.await_join
JOIN_FILE = "joining"
IDENTITY_FILE = "identity"  #: {"node_id", "cluster_id"}: whose data dir this is


class Storage:
    """A node's durable state; implements :class:`zraft.core.types.LogStorage`.

    ``fsync="never"`` skips every fsync: fast, and UNSAFE — a power loss or OS
    crash can lose acknowledged entries and votes, breaking Raft's guarantees.
    Use it only for tests and benchmarks.
    """

    def __init__(self, data_dir: Path, opts: dict[str, int], durable: bool) -> None:
        self.dir = data_dir
        self._opts = opts
        self._durable = durable
        self._failed: str | None = None
        self._lock_fd = _lock_dir(data_dir)
        try:
            self._hard = hardstate.load(data_dir)
            self._snaps = SnapshotStore(
                data_dir / SNAP_DIR, keep=opts["keep_snapshots"], durable=durable
            )
            self._log = self._open_log()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        segment_bytes: int = 64 << 20,
        fsync: str = "always",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        keep_snapshots: int = 2,
    ) -> Storage:
        """Open (creating if needed) and recover ``data_dir``; raises CorruptLog on damage."""
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        if not MIN_SEGMENT_BYTES <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes out of range: {segment_bytes}")
        if not rec.REC_HDR_BYTES < max_record_bytes <= MAX_RECORD_LIMIT:
            raise ValueError(f"max_record_bytes out of range: {max_record_bytes}")
        if not 1 <= keep_snapshots <= MAX_KEEP_SNAPSHOTS:
            raise ValueError(f"keep_snapshots out of range: {keep_snapshots}")
        if fsync == "never":
            log.warning("storage_fsync_disabled", dir=str(data_dir), note="UNSAFE: tests only")
        path = Path(data_dir)
        for sub in (path, path / LOG_DIR, path / SNAP_DIR):
            sub.mkdir(parents=True, exist_ok=True)
        opts = {
            "segment_bytes": segment_bytes,
            "max_record_bytes": max_record_bytes,
            "keep_snapshots": keep_snapshots,
        }
        return cls(path, opts, fsync == "always")

    def _open_log(self) -> SegmentLog:
        started = time.monotonic()
        slog, _ = recover(
            self.dir / LOG_DIR,
            segment_bytes=self._opts["segment_bytes"],
            durable=self._durable,
            max_record_bytes=self._opts["max_record_bytes"],
        )
        try:
            reconcile(slog, self._snaps.newest())
            self._sync_recovered(slog)
        except BaseException:
            slog.close()
            raise
        log.info(
            "storage_opened",
            dir=str(self.dir),
            first_index=slog.first_index(),
            last_index=slog.last_index(),
            segments=slog.segment_count(),
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return slog

    def _sync_recovered(self, slog: SegmentLog) -> None:
        """Make durable whatever a killed process left visible but unsynced: log bytes,
        and renames (hard state, snapshots) whose directory fsync never ran."""
        if not self._durable:
            return
        slog.sync_recovered()
        for sub in (self.dir, self.dir / SNAP_DIR):
            fileutil.fsync_dir(sub)

    # ------------------------------------------------------------------ LogStorage

    def initial_state(self) -> tuple[HardState, Membership]:
        hs = self._hard.hard_state if self._hard else HardState()
        snap = self._snaps.newest()
        cfg = self._log.last_config_index()
        if cfg and (snap is None or cfg > snap.index):
            return hs, Membership.decode(self._log.entries(cfg, cfg + 1, 0)[0].data)
        if snap is not None:
            return hs, snap.membership
        return hs, self.bootstrap_membership()

    def first_index(self) -> int:
        return self._log.first_index()

    def last_index(self) -> int:
        return self._log.last_index()

    def term(self, index: int) -> int:
        return self._log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        return self._log.entries(lo, hi, max_bytes)

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snaps.newest()

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        """Bytes of a snapshot being sent; Compacted if it was pruned, or set aside as
        it failed its checksum when read through (see ``snapshots_set_aside``)."""
        return self._snaps.chunk(index, offset, max_bytes)

    def snapshots_set_aside(self) -> int:
        """How many snapshots failed their checksum while being sent (since open)."""
        return self._snaps.corrupt_found

    # ------------------------------------------------------------------ writes

    @contextlib.contextmanager
    def _writing(self, op: str) -> Iterator[None]:
        """Refuse writes once failed; turn an OSError into the failed state."""
        if self._failed is not None:
            raise StorageFailed(f"storage is read-only after an earlier failure: {self._failed}")
        try:
            yield
        except OSError as err:
            self._failed = f"{op}: {err}"
            log.error("storage_failed", op=op, errno=err.errno, error=str(err), dir=str(self.dir))
            with contextlib.suppress(OSError):  # and cut what no flush made durable
                self._log.cut_unflushed()
            raise StorageFailed(self._failed) from err

    def append(self, entries: Sequence[Entry]) -> None:
        """Write (not yet durable) ``entries``; an index <= last_index replaces that suffix.

        Replacing entries a snapshot covers would contradict the snapshot (they are
        committed): that is a caller bug and raises ValueError.
        """
        snap = self._snaps.newest()
        if entries and snap is not None and entries[0].index <= snap.index:
            raise ValueError(
                f"append at {entries[0].index} would replace entries covered by the"
                f" snapshot at {snap.index}"
            )
        with self._writing("append"):
            self._log.append(entries)

    def sync(self) -> None:
        """Make every append since the last sync durable: normally ONE fdatasync."""
        with self._writing("sync"):
            self._log.sync()

    def fsync_histogram(self) -> Histogram:
        """How long the log's fdatasyncs took, in microseconds, since this storage opened."""
        return self._log.fsync_histogram()

    def sync_begin(self, notify: Callable[[], None]) -> None:
        """Start a flush of every append so far on a helper thread; don't wait for it.

        ``notify`` is called (from that thread) when a flush ends; :meth:`synced_index`
        then says how far the log is durable. A leader uses this so its reactor keeps
        serving while its disk flushes; everything else uses :meth:`sync`.
        """
        with self._writing("sync"):
            self._log.sync_begin(notify)

    def synced_index(self) -> int:
        """The last log index known durable; raises StorageFailed if a flush failed."""
        with self._writing("sync"):
            return self._log.synced_index()

    def sync_pending(self) -> bool:
        return self._log.sync_pending()

    def set_hard_state(self, hs: HardState) -> None:
        """Durable on return; the term never moves backwards."""
        current = self._hard.hard_state if self._hard else HardState()
        if hs.term < current.term:
            raise ValueError(f"term must not go backwards: {current.term} -> {hs.term}")
        if self._hard is not None and hs == current:
            return
        boot = self._hard.bootstrap if self._hard else None
        new = hardstate.Persisted(hs, boot)
        with self._writing("set_hard_state"):
            hardstate.store(self.dir, new, durable=self._durable)
            self._hard = new

    def compact(self, index: int) -> None:
        """Delete whole segments whose entries are all <= index.

        Never past the OLDEST retained snapshot: if the newest one turns out damaged
        at the next open, the older one plus the log still rebuild the state. With no
        snapshot, nothing: a compacted log always has a snapshot under it (open checks).
        """
        snap = self._snaps.oldest()
        index = min(index, snap.index if snap is not None else 0)
        with self._writing("compact"):
            removed = self._log.compact(index)
        if removed:
            log.info("storage_compacted", index=index, segments=removed, first=self.first_index())

    def wait_deletions(self) -> None:
        """Block until compacted segment files are gone (they go on a helper thread)."""
        self._log.wait_deletions()

    def bootstrap(self, membership: Membership) -> None:
        """Record the initial membership; only on an empty data dir."""
        if not self.is_empty():
            raise AlreadyBootstrapped(f"{self.dir} already holds state")
        new = hardstate.Persisted(HardState(), membership)
        with self._writing("bootstrap"):
            hardstate.store(self.dir, new, durable=self._durable)
            self._hard = new
        log.info("storage_bootstrapped", voters=sorted(membership.voters))

    def readopt_bootstrap(self, membership: Membership) -> bool:
        """Give a data dir whose bootstrap membership was lost (a hard state rewritten by
        ``repair(reset_hard_state=True)``) the one it was started with, if nothing else
        names members (no CONFIG entry, no snapshot); True if adopted."""
        if self._hard is None or self._hard.bootstrap is not None:
            return False
        if self._log.last_config_index() or self._snaps.newest() is not None:
            return False
        new = hardstate.Persisted(self._hard.hard_state, membership)
        with self._writing("readopt_bootstrap"):
            hardstate.store(self.dir, new, durable=self._durable)
            self._hard = new
        log.warning("storage_bootstrap_readopted", voters=sorted(membership.voters))
        return True

    def bootstrap_membership(self) -> Membership:
        """The membership given at bootstrap (in force before any CONFIG entry), or empty."""
        if self._hard and self._hard.bootstrap is not None:
            return self._hard.bootstrap
        return Membership()

    def joining(self) -> tuple[bool, int | None]:
        """(waiting to be added?, the index of the entry that added us, if known)."""
        try:
            text = (self.dir / JOIN_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return False, None
        except (OSError, UnicodeDecodeError):
            return True, None  # unreadable: keep waiting, the join answer says it again
        return True, (int(text) if text.isdigit() else None)

    def set_joining(self, index: int | None) -> None:
        """Record (durably) that this node waits to be added, and at which index if known."""
        data = b"" if index is None else str(index).encode()
        with self._writing("set_joining"):
            fileutil.atomic_write(self.dir / JOIN_FILE, data, durable=self._durable)

    def clear_joining(self) -> None:
        with self._writing("clear_joining"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / JOIN_FILE)
            if self._durable:
                fileutil.fsync_dir(self.dir)

    def claim(self, node_id: str, cluster_id: str) -> None:
        """Bind the data dir to one node of one cluster; refuse it to anyone else.

        Swapped volumes or a copied directory would otherwise let a node start with
        another's votes and log, and then vote twice in one term or acknowledge
        entries it never received. The first claim writes the identity file; while
        the dir holds no state yet, a new claim replaces it (a first start with a
        wrong setting is undone by starting right)."""
        path = self.dir / IDENTITY_FILE
        want = {"node_id": node_id, "cluster_id": cluster_id}
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        if not raw:  # none yet, or an empty one a crash left (written without fsync)
            self._check_unclaimed_state(node_id)
        if not raw or self.is_empty():
            fileutil.atomic_write(path, json.dumps(want).encode(), durable=self._durable)
            return
        try:
            have = json.loads(raw)
        except ValueError:
            have = None
        if not isinstance(have, dict) or not {"node_id", "cluster_id"} <= have.keys():
            raise DataDirMismatch(
                f"{path} is damaged: {raw[:80]!r}; if this dir is {node_id}'s, write"
                f" {json.dumps(want)} into it"
            )
        if (have["node_id"], have["cluster_id"]) != (node_id, cluster_id):
            raise DataDirMismatch(
                f"{self.dir} belongs to node {have['node_id']!r} of cluster"
                f" {have['cluster_id']!r}, not node {node_id!r} of cluster {cluster_id!r};"
                " point this node at its own data dir"
            )

    def _check_unclaimed_state(self, node_id: str) -> None:
        """A dir from before identity files: its membership must at least name us."""
        if self.is_empty() or self.joining()[0]:
            return  # nothing to protect, or a joiner not yet in its own membership
        members = self.initial_state()[1].ids()
        if members and node_id not in members:
            raise DataDirMismatch(
                f"{self.dir} holds the state of a cluster of {sorted(members)}, which does"
                f" not include {node_id!r}; point this node at its own data dir"
            )

    def check_hard_state_present(self) -> None:
        """Refuse a log or snapshot whose hard-state file is gone: its term and vote are
        unknown, and a node starting at term 0 could vote twice in a term it voted in.

        Only for a node's own data dir (the storage API alone may hold entries without
        ever having stored a hard state)."""
        if self._hard is None and (self._log.last_index() > 0 or self._snaps.newest()):
            path = self.dir / hardstate.FILE_NAME
            raise CorruptHardState(
                f"{path}: missing beside a log up to index {self._log.last_index()}; the term"
                " and vote it held are lost. Restore it from a backup, re-provision this"
                " node (an empty data dir, started with --join), or, if every peer is known"
                " to be past its last term, `zraft repair --reset-hard-state`",
                path=str(path),
            )

    def is_empty(self) -> bool:
        return (
            self._hard is None
            and self._log.segment_count() == 0
            and self._log.last_index() == 0
            and self._snaps.newest() is None
        )

    # ------------------------------------------------------------------ snapshots

    def write_snapshot(
        self, index: int, term: int, membership: Membership, chunks: Iterable[bytes]
    ) -> SnapshotMeta:
        """Write a snapshot of the local state machine; safe from a helper thread."""
        assert index >= 0 and term >= 0
        try:
            return self._snaps.write(index, term, membership, chunks)
        except OSError as err:
            raise StorageFailed(f"write_snapshot: {err}") from err

    def read_snapshot(self, meta: SnapshotMeta, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream a snapshot's data; raises CorruptSnapshot at the end if it fails its crc."""
        return self._snaps.read(meta, chunk_bytes)

    def stage_snapshot_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        """Store a chunk received from the leader (made durable by finish_staged_snapshot)."""
        with self._writing("stage_snapshot_chunk"):
            self._snaps.stage(meta, offset, data)

    def finish_staged_snapshot(self, meta: SnapshotMeta) -> bool:
        """Verify + publish the staged snapshot; False if invalid.

        The log is left alone: the core decides next whether the snapshot replaces it
        (then :meth:`restart_log_after` follows) or whether it already holds those
        entries. Resetting here made a log that held a different, uncommitted entry
        at the snapshot's index look as if it held the snapshot's. A crash in between
        is finished at open (see :func:`reconcile`).
        """
        with self._writing("finish_staged_snapshot"):
            if not self._snaps.finish_staged(meta):
                return False
        log.info("storage_snapshot_published", index=meta.index, term=meta.term)
        return True

    def restart_log_after(self, meta: SnapshotMeta) -> None:
        """The core adopted ``meta``: the log continues after it (kept if it agrees)."""
        with self._writing("restart_log_after"):
            self._log.reset(meta.index, meta.term)
        log.info("storage_snapshot_installed", index=meta.index, term=meta.term)

    # ------------------------------------------------------------------ lifecycle

    def recover_writes(self) -> None:
        """Leave the failed state by re-reading everything from disk (e.g. after freeing space)."""
        try:
            if self._failed is not None:
                self._log.rollback_unrecorded()
            self._log.close()
            self._hard = hardstate.load(self.dir)
            self._log = self._open_log()
        except OSError as err:
            self._failed = f"recover_writes: {err}"
            raise StorageFailed(self._failed) from err
        if self._failed is not None:
            log.info("storage_writes_recovered", previous_failure=self._failed)
        self._failed = None

    @property
    def failed(self) -> str | None:
        """Why writes are refused, or None."""
        return self._failed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._log.close()
        finally:
            os.close(self._lock_fd)  # even if a helper thread's failure surfaces here

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def disk_bytes(self) -> int:
        return self._log.disk_bytes() + self._snaps.disk_bytes()

    def segment_count(self) -> int:
        return self._log.segment_count()


def reconcile(slog: SegmentLog, snap: SnapshotMeta | None) -> None:
    """Make the log agree with the newest snapshot (finishing an interrupted install)."""
    if snap is None:
        if slog.first_index() > 1:  # compacted: the state before it lived in a snapshot
            raise CorruptLog(
                f"{slog.dir}: log starts at index {slog.first_index()} but no valid snapshot"
                f" holds the entries before it (offset 0)",
                path=str(slog.dir),
                offset=0,
            )
        return
    if slog.segment_count() == 0:
        slog.set_empty_boundary(snap.index, snap.term)
        return
    if slog.first_index() > snap.index + 1:
        raise CorruptLog(
            f"{slog.dir}: log starts at index {slog.first_index()} but the newest valid snapshot"
            f" ends at {snap.index}: entries in between are missing (offset 0)",
            path=str(slog.dir),
            offset=0,
        )
    if slog.last_index() < snap.index or slog.term(snap.index) != snap.term:
        log.warning("storage_log_reset_to_snapshot", index=snap.index, term=snap.term)
        slog.reset(snap.index, snap.term)


def _lock_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is open by another Storage") from None
    return fd
