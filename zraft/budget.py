"""How many commands one reactor turn may propose: a count that shrinks when turns run long.

Heartbeats and appends leave only between turns, so a turn is the leader's unit of
silence. ``max_batch`` bounds a turn by count, but the cost of a command depends on the
host and the state machine: on a slow phase of our test VM 2048 commands took 340 ms,
most of the 500 ms minimum election timeout. So the budget adapts: a turn that
proposed and overran ``max_turn_ms`` halves it; a turn that used all of it in under
half the target doubles it (if a turn's cost grows with its batch, the doubled one
still fits), and anything between holds it. The target sits well above the turns a
healthy overloaded leader runs (131 ms p99 at 2048 commands on our VM): smaller
batches there cost throughput (512 per turn: 12.5k ops/s against 20.3k), so the
budget is a guard for slow phases, not a latency knob. Time is an argument, so the
rule is tested without a clock.
"""

from __future__ import annotations


class TurnBudget:
    """The proposal budget of the next reactor turn (between ``floor`` and ``max_batch``)."""

    def __init__(self, max_batch: int, max_turn_ms: int) -> None:
        assert max_batch > 0 and max_turn_ms > 0
        self.max_batch = max_batch
        self.max_turn_s = max_turn_ms / 1000
        #: never fewer than this: a lone slow command must not starve the ones behind it
        self.floor = max(1, max_batch // 64)
        self.size = max_batch
        self.shrinks = 0  #: times a long turn halved the budget (a metric)

    def observe(self, turn_s: float, proposed: int) -> None:
        """Account one finished turn: how long it took and how many commands it proposed."""
        assert 0 <= proposed <= self.size, (proposed, self.size)
        if proposed == 0:
            return  # its length says nothing about what a command costs
        if turn_s > self.max_turn_s:
            if self.size > self.floor:
                self.size = max(self.floor, self.size // 2)
                self.shrinks += 1
        elif proposed == self.size and turn_s < self.max_turn_s / 2:
            self.size = min(self.max_batch, self.size * 2)
        assert self.floor <= self.size <= self.max_batch
