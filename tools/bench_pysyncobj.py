#!/usr/bin/env python3
"""The PySyncObj side of ``tools/bench.py``: node processes, their front-end, a load client.

``node``: one process holding a ``SyncObj`` with a replicated dict ``set(key,
value)`` plus a ZeroMQ ROUTER front-end, so separate client processes can send
puts the way zraft clients do. The front-end calls the replicated method with a
callback and replies once the entry is applied (the callback runs on PySyncObj's
tick thread and hands the reply back over an inproc PUSH/PULL pair, because a
ZeroMQ socket belongs to one thread). A non-leader answers ``not_leader`` with
the leader's front-end address, like a zraft follower.

``load``: the same pipelined engine as ``bench_load.py`` with this framing.
PySyncObj runs in its default in-memory mode: it never fsyncs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_load  # a sibling script, not a package
from bench_load import LoadConfig, Reply, Stats

# bench_load put the checkout on sys.path
from zraft.gc_tuning import tune_gc
from zraft.launcher import free_ports

MAX_FRAME_BYTES = 4 << 20
REPLY_ADDR = "inproc://pso-replies"
FAIL_NAMES = {
    1: "busy",  # QUEUE_FULL
    2: "no_leader",  # MISSING_LEADER
    3: "discarded",
    4: "not_leader",
    5: "leader_changed",
    6: "request_denied",
    7: "unknown_outcome",
}


class PsoProtocol:
    """Request ``[req_id, kind, key, value]``; reply ``[req_id, ok, error, leader, info]``."""

    def encode_put(self, req_id: int, key: str, value: bytes) -> bytes:
        packed: bytes = msgpack.packb([req_id, "put", key, value], use_bin_type=True)
        return packed

    def encode_puts(self, items: list[tuple[int, str]], value: bytes) -> bytes:
        raise NotImplementedError("PySyncObj has no client protocol of its own to batch")

    def decode(self, frame: bytes) -> list[Reply]:
        try:
            msg = msgpack.unpackb(frame, raw=False)
        except (ValueError, msgpack.UnpackException):
            return []
        if not isinstance(msg, list) or len(msg) != 5 or not isinstance(msg[0], int):
            return []
        return [Reply(msg[0], bool(msg[1]), str(msg[2] or ""), str(msg[3] or ""))]


def ask_status(front: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """One node's status from its front-end, or None if it does not answer in time."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(front)
        sock.send(msgpack.packb([0, "status", "", b""], use_bin_type=True))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        msg = msgpack.unpackb(sock.recv(), raw=False)
        info = msg[4] if isinstance(msg, list) and len(msg) == 5 else None
        return info if isinstance(info, dict) else None
    finally:
        sock.close(linger=0)


# ---------------------------------------------------------------------------- node process


def make_obj(self_addr: str, partners: list[str], conf: Any) -> Any:
    """A SyncObj holding a replicated dict (defined lazily: pysyncobj is an optional extra)."""
    from pysyncobj import SyncObj, replicated

    class KVObj(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(self_addr, partners, conf)
            self.data: dict[str, bytes] = {}

        @replicated  # type: ignore[untyped-decorator,unused-ignore]
        def set(self, key: str, value: bytes) -> None:
            self.data[key] = value

    return KVObj()


class FrontEnd:
    """The ROUTER front-end of one node: puts go through the replicated ``set``."""

    def __init__(self, obj: Any, front: str, fronts: dict[str, str], counters: dict[str, int]):
        self.obj, self.fronts, self.counters = obj, fronts, counters
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.bind(front)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.bind(REPLY_ADDR)
        self._tls = threading.local()

    def leader_front(self) -> str:
        leader = self.obj._getLeader()
        return self.fronts.get(getattr(leader, "address", str(leader)), "") if leader else ""

    def _reply(self, identity: bytes, msg: list[Any]) -> None:
        """Called from any thread: hand the reply to the front-end thread."""
        push = getattr(self._tls, "push", None)
        if push is None:
            push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(REPLY_ADDR)
            self._tls.push = push
        push.send_multipart([identity, msgpack.packb(msg, use_bin_type=True)])

    def _done(self, identity: bytes, req_id: int, _res: Any, err: int) -> None:
        if err == 0:
            self._reply(identity, [req_id, True, "", "", None])
        else:
            name = FAIL_NAMES.get(err, f"fail_{err}")
            self._reply(identity, [req_id, False, name, self.leader_front(), None])

    def status(self) -> dict[str, Any]:
        obj = self.obj
        return {
            "role": "leader" if obj._isLeader() else "other",
            "leader": self.leader_front(),
            "term": obj.raftCurrentTerm,
            "commit": obj.raftCommitIndex,
            "applied": obj.raftLastApplied,
            "state_changes": self.counters["state_changes"],
        }

    def _handle(self, identity: bytes, frame: bytes) -> None:
        try:
            req_id, kind, key, value = msgpack.unpackb(frame, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return  # hostile or garbled: drop
        if kind == "status":
            self._send(identity, [req_id, True, "", "", self.status()])
        elif not self.obj._isLeader():
            self._send(identity, [req_id, False, "not_leader", self.leader_front(), None])
        else:
            self.obj.set(key, value, callback=partial(self._done, identity, req_id))

    def _send(self, identity: bytes, msg: list[Any]) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.router.send_multipart(
                [identity, msgpack.packb(msg, use_bin_type=True)], zmq.NOBLOCK
            )

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll(1000):
                for _ in range(4096):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(parts) != 2:
                        continue
                    if sock is self.router:
                        self._handle(parts[0], parts[1])
                    else:
                        with contextlib.suppress(zmq.ZMQError):
                            self.router.send_multipart(parts, zmq.NOBLOCK)


def embedded_load(obj: Any, cfg: LoadConfig, out: str) -> None:
    """PySyncObj's own in-process load (as in its benchmarks/testobj.py), on the leader only."""
    deadline = time.monotonic() + 30.0
    while obj._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let a fresh election settle before deciding who loads
    if not obj._isLeader():
        bench_load.write_result(out, {"role": "follower"})
        return
    cfg = LoadConfig(**{**bench_load._cfg_dict(cfg), "start_at": time.time() + 0.2})
    stats = Stats(cfg.measure_from, cfg.measure_to, seed=cfg.seed)
    slots = threading.BoundedSemaphore(cfg.window)
    value = os.urandom(cfg.payload_bytes)

    def done(t0: float, _res: Any, err: int) -> None:
        if err == 0:
            stats.record_ok(time.time(), time.perf_counter() - t0)
        else:
            stats.record_error(FAIL_NAMES.get(err, f"fail_{err}"))
        slots.release()

    bench_load._wait_until(cfg.start_at)
    term_before = int(obj.raftCurrentTerm)
    i = 0
    while time.time() < cfg.measure_to:
        if not slots.acquire(timeout=0.2):
            continue
        i += 1
        stats.sent += 1
        obj.set(f"e:{i % cfg.key_space}", value, callback=partial(done, time.perf_counter()))
    drain_until = time.monotonic() + bench_load.DRAIN_S
    outstanding = cfg.window
    while outstanding and time.monotonic() < drain_until:
        if slots.acquire(timeout=0.1):
            outstanding -= 1
    if outstanding:
        stats.record_error("unanswered", outstanding)
    result = {
        **stats.to_json(),
        "role": "leader",
        "terms_during_load": int(obj.raftCurrentTerm) - term_before,
        "leader_at_end": bool(obj._isLeader()),
    }
    bench_load.write_result(out, result)


def run_node(args: argparse.Namespace) -> int:
    from pysyncobj import SyncObjConf

    counters = {"state_changes": 0}

    def on_state(_old: int, _new: int) -> None:
        counters["state_changes"] += 1

    conf = SyncObjConf(appendEntriesUseBatch=args.append_batch == "on", onStateChanged=on_state)
    partners = [p for p in args.partners.split(",") if p]
    fronts = dict(kv.split("=", 1) for kv in args.fronts.split(",") if kv)
    # the collector settings every zraft node process runs with: the same for both
    # systems (on our machine they made no clear difference to PySyncObj: 33-42k either way)
    tune_gc()
    obj = make_obj(args.self_addr, partners, conf)
    front = FrontEnd(obj, args.front, fronts, counters)
    if args.embedded_out:
        cfg = bench_load.load_config(args)
        out = f"{args.embedded_out}.{args.self_addr.rsplit(':', 1)[1]}.json"
        threading.Thread(target=embedded_load, args=(obj, cfg, out), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # in-memory: nothing to flush
    front.serve_forever()
    return 0


# ---------------------------------------------------------------------------- cluster launcher


@dataclass
class PsoNode:
    node_id: str
    raft_addr: str
    front: str
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class PsoCluster:
    """N PySyncObj node processes on 127.0.0.1, each ended by PID on close."""

    def __init__(
        self, nodes: int = 3, *, batch: bool = True, extra_args: list[str] | None = None
    ) -> None:
        assert 1 <= nodes <= 15, "a small cluster"
        self.base_dir = Path(tempfile.mkdtemp(prefix="pso-cluster-"))
        self.batch, self.extra_args = batch, extra_args or []
        ports = free_ports(2 * nodes)
        self.nodes = {
            f"p{i + 1}": PsoNode(
                f"p{i + 1}", f"127.0.0.1:{ports[2 * i]}", f"tcp://127.0.0.1:{ports[2 * i + 1]}"
            )
            for i in range(nodes)
        }
        self.fronts = ",".join(f"{n.raft_addr}={n.front}" for n in self.nodes.values())

    @property
    def endpoints(self) -> list[str]:
        return [n.front for n in self.nodes.values()]

    def _command(self, node: PsoNode) -> list[str]:
        partners = ",".join(n.raft_addr for n in self.nodes.values() if n is not node)
        return [
            sys.executable, str(Path(__file__).resolve()), "node",
            "--self-addr", node.raft_addr, "--partners", partners, "--front", node.front,
            "--fronts", self.fronts, "--append-batch", "on" if self.batch else "off",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, node_id: str | None = None) -> None:
        for node in [self.nodes[node_id]] if node_id else list(self.nodes.values()):
            if node.alive():
                continue
            with open(self.base_dir / f"{node.node_id}.stderr", "ab") as err:
                node.proc = subprocess.Popen(
                    self._command(node),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes[node_id].proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def statuses(self, timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
        out = {}
        for nid, node in self.nodes.items():
            if node.alive() and (st := ask_status(node.front, timeout_s)) is not None:
                out[nid] = st
        return out

    def wait_for_leader(self, timeout_s: float = 30.0) -> str:
        """Poll until exactly one node says it leads and every live node names it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sts = self.statuses()
            leaders = [nid for nid, s in sts.items() if s["role"] == "leader"]
            live = sum(1 for n in self.nodes.values() if n.alive())
            if len(leaders) == 1 and len(sts) == live:
                front = self.nodes[leaders[0]].front
                if all(s["leader"] == front for s in sts.values()):
                    return leaders[0]
            time.sleep(0.05)
        raise TimeoutError(f"no PySyncObj leader within {timeout_s}s (logs in {self.base_dir})")

    def close(self) -> None:
        """End every node by PID, then remove the temp dir."""
        for nid in self.nodes:
            self.kill(nid, signal.SIGTERM)
        shutil.rmtree(self.base_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    node = sub.add_parser("node", help="one PySyncObj node with a ZeroMQ front-end")
    node.add_argument("--self-addr", required=True, help="host:port for Raft traffic")
    node.add_argument("--partners", required=True, help="comma-separated host:port")
    node.add_argument("--front", required=True, help="tcp://127.0.0.1:port for clients")
    node.add_argument("--fronts", required=True, help="raft_addr=front,... (leader hints)")
    node.add_argument(
        "--append-batch", choices=["on", "off"], default="on", help="appendEntriesUseBatch"
    )
    node.add_argument(
        "--embedded-out",
        default=None,
        help="run in-process load on the leader; result in PREFIX.<port>.json",
    )
    node.add_argument("--window", type=int, default=64)
    node.add_argument("--duration", type=float, default=5.0)
    node.add_argument("--warmup", type=float, default=1.0)
    node.add_argument("--payload", type=int, default=10)
    node.add_argument("--keys", type=int, default=1000)
    node.add_argument("--op-timeout", type=float, default=5.0)
    node.add_argument("--start-at", type=float, default=0.0)
    node.add_argument("--rate", type=float, default=0.0)
    node.add_argument("--batch", type=int, default=1, help="ignored: PySyncObj has no batch API")
    node.add_argument("--worker", type=int, default=0)
    node.add_argument("--seed", type=int, default=0)
    load = sub.add_parser("load", help="pipelined DEALER load against the front-ends")
    load.add_argument("--endpoints", required=True, help="front-ends, leader first")
    bench_load.add_load_args(load)
    args = parser.parse_args(argv)
    if args.mode == "node":
        return run_node(args)
    endpoints = [e for e in args.endpoints.split(",") if e]
    stats = bench_load.run_pipelined(PsoProtocol(), endpoints, bench_load.load_config(args))
    bench_load.write_result(args.out, stats.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
