"""When a learner counts as caught up enough to vote (time is an argument: no clock)."""

from __future__ import annotations

from zraft.node import _PROMOTE_SLACK, _CommitHistory


def test_a_few_entries_behind_is_caught_up_at_once() -> None:
    h = _CommitHistory(window_s=0.25)
    assert h.caught_up(match=1000 - _PROMOTE_SLACK, commit=1000, now=0.0)
    assert not h.caught_up(match=1000 - _PROMOTE_SLACK - 1, commit=1000, now=0.0)


def test_thousands_behind_under_load_is_caught_up_if_less_than_a_window_behind() -> None:
    h = _CommitHistory(window_s=0.25)
    commit = 0
    for tick in range(20):  # 20k entries/s, sampled every 50 ms
        commit += 1000
        h.add(tick * 0.05, commit)
    now = 19 * 0.05
    # the commit index 250 ms ago was 15000; a learner 3000 entries (150 ms) behind
    assert h.caught_up(match=commit - 3000, commit=commit, now=now)
    # one 400 ms behind is not
    assert not h.caught_up(match=commit - 8000, commit=commit, now=now)


def test_no_verdict_before_a_whole_window_of_history() -> None:
    h = _CommitHistory(window_s=0.25)
    h.add(0.0, 100)
    h.add(0.05, 5000)
    assert not h.caught_up(match=4000, commit=5000, now=0.05)
    h.add(0.31, 9000)
    assert h.caught_up(match=5000, commit=9000, now=0.31), "holds what was committed at 0.05"
    assert not h.caught_up(match=4000, commit=9000, now=0.31)
    h.clear()
    assert not h.caught_up(match=8000, commit=9000, now=0.31)
