"""A peer dying while our ROUTER's input is stopped at its high-water mark must not
kill our process.

libzmq 4.3.5 aborts (``Assertion failed: !_io_error``) when a ZMTP heartbeat timer
fires on such a connection; the 30-minute gauntlet lost a node to it twice. The
transport therefore leaves liveness to the kernel (TCP_USER_TIMEOUT, keepalive).
This test recreates the exact conditions against the real transport sockets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from zraft.launcher import free_ports

ROUTER_CHILD = textwrap.dedent(
    """
    import sys, time, zmq
    from zraft.transport import Transport
    ctx = zmq.Context()
    t = Transport(ctx, "n1", sys.argv[1], {"n2": sys.argv[2]}, "cid")
    print("bound", flush=True)
    time.sleep(float(sys.argv[3]))  # never reads: the peer's pipe fills, its input stops
    t.close()
    ctx.term()
    """
)

FLOOD_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time, zmq
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.SNDHWM, 100000)
    d.setsockopt(zmq.ROUTING_ID, b"n2")
    d.connect(sys.argv[1])
    for _ in range(20000):
        d.send(b"x" * 1000)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)  # the connection fails under a stopped input
    """
)


@pytest.mark.process
def test_peer_death_under_a_full_input_pipe_does_not_abort_the_node() -> None:
    port, peer_port = free_ports(2)
    addr = f"tcp://127.0.0.1:{port}"
    hold_s = 3.0  # > 2 ZMTP heartbeat intervals after the flood dies
    router = subprocess.Popen(
        [sys.executable, "-c", ROUTER_CHILD, addr, f"tcp://127.0.0.1:{peer_port}", str(hold_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    flood: subprocess.Popen[bytes] | None = None
    try:
        assert router.stdout is not None
        assert router.stdout.readline().strip() == b"bound"
        flood = subprocess.Popen([sys.executable, "-c", FLOOD_CHILD, addr])
        assert flood.wait(timeout=30) == -signal.SIGKILL
        _, err = router.communicate(timeout=30)
        assert router.returncode == 0, f"node process died ({router.returncode}): {err.decode()}"
    finally:
        for proc in (router, flood):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
