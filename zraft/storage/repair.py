"""Operator repair: cut a damaged log back to its last good record so the node can start.

SAFETY: discarding entries a voter has acknowledged is only safe if a majority of
the cluster still holds them (they then reach this node again from the leader).
The documented procedure: stop the node, run ``repair(data_dir)``, start the node;
it comes back as a follower and catches up. Never repair a majority of nodes at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from zraft.core.types import HardState
from zraft.storage import hardstate
from zraft.storage.errors import CorruptHardState, CorruptLog
from zraft.storage.recovery import Discarded, recover
from zraft.storage.snapshots import SnapshotStore
from zraft.storage.storage import LOG_DIR, SNAP_DIR, _lock_dir, reconcile

log = structlog.get_logger("zraft.storage")


@dataclass(slots=True)
class RepairReport:
    """What repair() found and discarded."""

    cuts: list[Discarded] = field(default_factory=list)  #: log cuts, oldest first
    log_reset: bool = False  #: the whole log was dropped (it did not meet the snapshot)
    hard_state_error: str = ""  #: why the hard-state file is unreadable ("" if fine)
    hard_state_reset: bool = False  #: it was rewritten (only with reset_hard_state=True)
    first_index: int = 0
    last_index: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.cuts) or self.log_reset or self.hard_state_reset

    @property
    def ok(self) -> bool:
        """The data dir will open (a corrupt hard state left in place keeps it closed)."""
        return not self.hard_state_error or self.hard_state_reset


def repair(
    data_dir: str | Path,
    *,
    reset_hard_state: bool = False,
    max_record_bytes: int = 16 << 20,
) -> RepairReport:
    """Discard the damaged suffix of the log (from the first bad record on) and report it.

    See the module docstring for when this is safe. A corrupt hard-state file is
    reported and left alone, because guessing term/vote can make this node vote
    twice in one term; ``reset_hard_state=True`` rewrites it with term = (highest
    term on disk + 1) and no vote — UNSAFE if the node had already reached a
    higher term; only for a node whose peers are known to be past that term.
    """
    path = Path(data_dir)
    if not (path / LOG_DIR).is_dir():  # touch nothing (not even a LOCK) in anything else
        raise FileNotFoundError(f"{path} is not a zraft data dir (no {LOG_DIR}/ in it)")
    lock_fd = _lock_dir(path)
    try:
        report = RepairReport()
        snaps = SnapshotStore(path / SNAP_DIR, keep=1000, durable=True)
        slog, report.cuts = recover(
            path / LOG_DIR,
            segment_bytes=1 << 32,
            durable=True,
            max_record_bytes=max_record_bytes,
            repair=True,
        )
        try:
            snap = snaps.newest()
            try:
                reconcile(slog, snap)
            except CorruptLog as err:  # the log does not meet the snapshot (or there is none)
                index, term = (snap.index, snap.term) if snap else (0, 0)
                log.warning("storage_repair_log_reset", reason=str(err), index=index)
                slog.reset(index, term)
                report.log_reset = True
            report.first_index, report.last_index = slog.first_index(), slog.last_index()
            top_term = max(slog.term(slog.last_index()), snap.term if snap else 0)
        finally:
            slog.close()
        _repair_hard_state(path, report, reset_hard_state, top_term)
    finally:
        os.close(lock_fd)
    log.warning(
        "storage_repaired",
        dir=str(path),
        cuts=len(report.cuts),
        log_reset=report.log_reset,
        first_index=report.first_index,
        last_index=report.last_index,
        hard_state_error=report.hard_state_error,
    )
    return report


def _repair_hard_state(path: Path, report: RepairReport, reset: bool, top_term: int) -> None:
    try:
        missing = hardstate.load(path) is None and report.last_index > 0
        if missing and reset:  # a node refuses it (Storage.check_hard_state_present)
            raise CorruptHardState(f"{path / hardstate.FILE_NAME}: missing beside a log")
    except CorruptHardState as err:
        report.hard_state_error = str(err)
        if reset:
            new = hardstate.Persisted(HardState(term=top_term + 1), None)
            hardstate.store(path, new, durable=True)
            report.hard_state_reset = True
            log.warning("storage_hard_state_reset", term=top_term + 1)
