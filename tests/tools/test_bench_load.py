"""The load generator's open-loop pacing (``tools/bench_load.py``), without a cluster.

An open-loop load must count each op's latency from when it was due, not from when
the generator got round to sending it: otherwise the generator's own sleeps (and any
stall of its process) vanish from the numbers (coordinated omission). The socket is a
fake, and ``now`` is an argument: these tests use no clock and no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import zmq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import bench_load  # type: ignore[import-not-found,unused-ignore]  # noqa: E402  (tools/ is no package)


class _FakeSock:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.full = False

    def send(self, frame: bytes, flags: int = 0) -> None:
        if self.full:
            raise zmq.Again()
        self.frames.append(frame)


class _FakeConn:
    def __init__(self) -> None:
        self.sock = _FakeSock()


def _pipeline(rate_ops: float, window: int = 64) -> tuple[bench_load._Pipeline, _FakeSock]:
    cfg = bench_load.LoadConfig(start_at=0.0, duration_s=1.0, rate_ops=rate_ops, window=window)
    p = bench_load._Pipeline(bench_load.ZraftProtocol(), ["inproc://bench-load-test"], cfg)
    p.conn.close()
    conn = _FakeConn()
    p.conn = conn  # type: ignore[assignment]  # duck-typed: only .sock is used
    p.next_send = 10.0  # run() starts the pacing clock; here time is an argument
    return p, conn.sock


def test_paced_ops_count_their_latency_from_when_they_were_due() -> None:
    p, sock = _pipeline(rate_ops=1000.0)  # one op due every millisecond from t=10.0
    p._issue(10.0105)  # woken late: the ops due at 10.000 .. 10.010 go out now
    assert len(sock.frames) == 11 and p.stats.sent == 11
    assert list(p.inflight) == list(range(1, 12))
    assert list(p.inflight.values()) == pytest.approx([10.0 + k / 1000 for k in range(11)])
    assert p.next_send == pytest.approx(10.011)
    p._issue(10.0108)  # nothing new is due yet
    assert len(sock.frames) == 11


def test_a_closed_loop_counts_from_the_send() -> None:
    p, sock = _pipeline(rate_ops=0.0, window=5)
    p._issue(42.0)
    assert len(sock.frames) == 5 and set(p.inflight.values()) == {42.0}


def test_an_op_the_pipe_refuses_is_skipped_and_counted_once() -> None:
    p, sock = _pipeline(rate_ops=1000.0)
    sock.full = True
    p._issue(10.0025)  # three ops due; the pipe refuses the first, the rest stay due
    assert p.stats.unsent == 1 and not p.inflight
    assert p.next_send == pytest.approx(10.001)
    sock.full = False
    p._issue(10.0031)  # the ops still due go out, each timed from when it was due
    assert p.stats.unsent == 1
    assert list(p.inflight.values()) == pytest.approx([10.001, 10.002, 10.003])


def test_ops_due_while_the_window_is_full_are_skipped() -> None:
    p, _ = _pipeline(rate_ops=1000.0, window=2)
    p._issue(10.0045)  # five due, two fit
    assert len(p.inflight) == 2 and p.stats.unsent == 3
    assert p.next_send == pytest.approx(10.005)
