"""Polling helpers for socket tests: wait on conditions with generous deadlines, never sleep."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from zraft.codec import decode
from zraft.core.types import Message
from zraft.protocol import ClientReply
from zraft.transport import Inbound, Transport

DEADLINE_S = 5.0
LOCAL_ANY = "tcp://127.0.0.1:*"


def poll_until(fn: Callable[[], bool], timeout_s: float = DEADLINE_S, step_ms: int = 20) -> bool:
    """Call ``fn`` until it returns True or the deadline passes (waits on a Poller, not sleep)."""
    deadline = time.monotonic() + timeout_s
    idle = zmq.Poller()
    while True:
        if fn():
            return True
        if time.monotonic() >= deadline:
            return False
        idle.poll(step_ms)


def recv_some(t: Transport, n: int = 1, timeout_s: float = DEADLINE_S) -> list[Inbound]:
    """Receive until ``n`` valid messages arrived or the deadline passes."""
    got: list[Inbound] = []
    deadline = time.monotonic() + timeout_s
    poller = zmq.Poller()
    poller.register(t.router, zmq.POLLIN)
    while len(got) < n:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        if poller.poll(min(left_ms, 100)):
            got.extend(t.recv())
    return got


def deliver(src: Transport, dst: Transport, msg: Message, timeout_s: float = DEADLINE_S) -> Inbound:
    """Send (re-sending while the connection comes up, as Raft would) until dst gets ``msg``."""
    got: list[Inbound] = []

    def attempt() -> bool:
        src.send(msg)
        got.extend(dst.recv())
        return any(m == msg for _, m in got)

    assert poll_until(attempt, timeout_s, step_ms=50), f"{msg} never arrived; stats {src.stats()}"
    return next(item for item in got if item[1] == msg)


def client_socket(ctx: zmq.Context[Any], endpoint: str, **opts: Any) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in opts.items():
        sock.setsockopt(getattr(zmq, name.upper()), value)
    sock.connect(endpoint)
    return sock


def client_reply(
    sock: zmq.Socket[Any], cluster_id: str, timeout_s: float = DEADLINE_S
) -> ClientReply | None:
    """The next reply on a client socket, or None if none arrives in time."""
    if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        return None
    msg = decode(sock.recv(), cluster_id)
    assert isinstance(msg, ClientReply)
    return msg


@contextmanager
def context() -> Iterator[zmq.Context[Any]]:
    """A private zmq context, destroyed (linger 0) whatever happens."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)
