"""A randomized sweep over seeds: mixed faults, all invariants on, final convergence.

``ZRAFT_SWEEP_SEEDS=N`` runs a longer sweep. A failure names its seed; replay it with
``random_run(seed, ticks=SWEEP_TICKS)`` from zraft.testing.sim.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from zraft.core.raft import Raft
from zraft.core.types import Ready
from zraft.testing.sim import InvariantViolation, random_run

SWEEP_SEEDS = int(os.environ.get("ZRAFT_SWEEP_SEEDS", "500"))
SWEEP_TICKS = 120
CHUNK = 50


def _sweep(lo: int, hi: int) -> tuple[int, int]:
    acked = terms = 0
    for seed in range(lo, hi):
        c = random_run(seed, ticks=SWEEP_TICKS)
        acked += len(c.acked)
        terms += max((n.core().term for n in c.alive()), default=0)
    return acked, terms


def test_sweep_mixed_faults() -> None:
    acked = terms = 0
    for lo in range(0, SWEEP_SEEDS, CHUNK):
        a, t = _sweep(lo, min(lo + CHUNK, SWEEP_SEEDS))
        acked += a
        terms += t
    # the sweep must actually make progress and see elections, not idle
    assert acked > 10 * SWEEP_SEEDS
    assert terms > 2 * SWEEP_SEEDS


def test_replay_is_exact() -> None:
    a = random_run(4242, ticks=SWEEP_TICKS)
    b = random_run(4242, ticks=SWEEP_TICKS)
    assert a.sent == b.sent and a.acked == b.acked
    assert [n.payloads for n in a.nodes.values()] == [n.payloads for n in b.nodes.values()]


def test_sweep_leaders_flushing_after_they_write() -> None:
    """Dissertation 10.2.1 as the node does it: a leader's own flush lands up to 8 ticks
    after its write (a crash loses the rest), and it counts its copy only once flushed."""
    acked = 0
    for seed in range(SWEEP_SEEDS // 2):
        c = random_run(seed, ticks=SWEEP_TICKS, leader_flush_ticks=(1, 3, 8)[seed % 3])
        acked += len(c.acked)
    assert acked > 10 * (SWEEP_SEEDS // 2)


def test_the_sweep_catches_a_leader_counting_its_unflushed_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lazy-flush sweep has teeth: a core that counts a leader's written-but-unflushed
    entries toward commit loses acknowledged values when that leader crashes."""
    real = Raft.advance

    def counts_too_early(self: Raft, ready: Ready, synced: bool = True) -> Any:
        return real(self, ready)

    monkeypatch.setattr(Raft, "advance", counts_too_early)
    caught = 0
    for seed in range(60):
        try:
            random_run(seed, ticks=SWEEP_TICKS, leader_flush_ticks=(1, 3, 8)[seed % 3])
        except InvariantViolation:
            caught += 1
    assert caught > 0


def test_sweep_with_paused_processes() -> None:
    """Processes stopped mid-run (SIGSTOP, a long GC) and resumed: what queued is stepped,
    then the missed ticks are owed (Raft.catch_up). Lease reads are on in every run, as a
    stall is what a lease must survive."""
    acked = 0
    for seed in range(SWEEP_SEEDS):
        c = random_run(seed, ticks=SWEEP_TICKS, pause=0.02, lease_reads=True)
        acked += len(c.acked)
    assert acked > 10 * SWEEP_SEEDS


def test_the_pause_sweep_catches_a_lease_that_outlives_a_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pause sweep has teeth: a core that does not count a long stall on its clock
    serves lease reads after the cluster moved on. (These seeds caught it when written;
    the whole sweep caught it 6 times in 500 seeds.)"""
    real = Raft.catch_up

    def forgets_the_stall(self: Raft, ticks: int) -> None:
        before = self._now
        real(self, ticks)
        self._now = min(self._now, before + 1)

    monkeypatch.setattr(Raft, "catch_up", forgets_the_stall)
    caught = 0
    for seed in range(180, 310):
        try:
            random_run(seed, ticks=SWEEP_TICKS, pause=0.02, lease_reads=True)
        except InvariantViolation:
            caught += 1
    assert caught > 0
