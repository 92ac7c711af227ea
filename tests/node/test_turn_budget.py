"""The turn budget's rule, with time as an argument (zraft.budget)."""

from __future__ import annotations

from typing import Any

import pytest

from zraft.budget import TurnBudget
from zraft.config import Config
from zraft.errors import ConfigError


def test_a_long_turn_halves_the_budget_down_to_its_floor() -> None:
    b = TurnBudget(max_batch=2048, max_turn_ms=200)
    assert b.size == 2048 and b.floor == 32
    b.observe(0.250, proposed=2048)
    assert b.size == 1024 and b.shrinks == 1
    for _ in range(20):
        b.observe(0.500, proposed=b.size)
    assert b.size == b.floor == 32
    assert b.shrinks == 6  # 1024 -> 512 -> 256 -> 128 -> 64 -> 32, then no further


def test_a_long_turn_that_proposed_nothing_says_nothing_about_commands() -> None:
    b = TurnBudget(max_batch=2048, max_turn_ms=200)
    b.observe(0.400, proposed=0)  # a long fsync, or applying what earlier turns proposed
    assert b.size == 2048 and b.shrinks == 0


def test_short_turns_that_used_the_whole_budget_double_it_back_to_max_batch() -> None:
    b = TurnBudget(max_batch=2048, max_turn_ms=200)
    for _ in range(3):
        b.observe(0.3, proposed=b.size)
    assert b.size == 256
    b.observe(0.010, proposed=256)
    assert b.size == 512
    for _ in range(10):
        b.observe(0.010, proposed=b.size)
    assert b.size == 2048


def test_the_budget_holds_when_it_was_not_the_limit_or_turns_are_middling() -> None:
    b = TurnBudget(max_batch=2048, max_turn_ms=200)
    b.observe(0.3, proposed=2048)
    b.observe(0.001, proposed=10)  # little to propose: no evidence a bigger batch is cheap
    assert b.size == 1024
    b.observe(0.150, proposed=1024)  # between half the target and the target: steady
    assert b.size == 1024


def test_a_tiny_max_batch_keeps_a_floor_of_one() -> None:
    b = TurnBudget(max_batch=8, max_turn_ms=20)
    for _ in range(10):
        b.observe(1.0, proposed=b.size)
    assert b.size == b.floor == 1


@pytest.mark.parametrize("per_cmd_us", [50, 150, 400, 2000])
def test_with_a_backlog_turns_settle_under_the_target_with_useful_batches(
    per_cmd_us: int,
) -> None:
    """A model host where a command costs ``per_cmd_us`` and a turn 2 ms besides. Halving
    brings turns under the target within a few turns; from then on none overruns it
    (doubling starts only from under half), and batches stay at least half of what fits."""
    fixed_s, per_cmd_s, target_s = 0.002, per_cmd_us / 1e6, 0.200
    b = TurnBudget(max_batch=2048, max_turn_ms=200)
    fits = min(2048, max(b.floor, int((target_s - fixed_s) / per_cmd_s)))
    turns = []
    for _ in range(200):
        proposed = b.size  # an endless backlog
        turn_s = fixed_s + per_cmd_s * proposed
        turns.append((turn_s, proposed))
        b.observe(turn_s, proposed)
    first_ok = next(i for i, (t, _) in enumerate(turns) if t <= target_s)
    assert first_ok <= 6  # log2(max_batch / floor) halvings at most
    assert max(t for t, _ in turns[first_ok:]) <= target_s
    settled = turns[20:]
    assert sum(p for _, p in settled) / len(settled) >= fits / 2


def _config(**overrides: Any) -> Config:
    return Config(node_id="a", bind="tcp://127.0.0.1:7001", data_dir="/tmp/x", **overrides)


def test_the_default_target_follows_the_election_timeout() -> None:
    assert _config().turn_budget_ms == 200  # 2/5 of 10 ticks x 50 ms
    assert _config(tick_ms=10).turn_budget_ms == 40
    assert _config(max_turn_ms=75).turn_budget_ms == 75
    with pytest.raises(ConfigError, match="max_turn_ms"):
        _config(max_turn_ms=0).validate()
