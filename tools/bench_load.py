#!/usr/bin/env python3
"""zraft load generator for ``tools/bench.py``: one worker process per invocation.

``client``: a pipelined ZeroMQ DEALER keeps up to ``--window`` puts in flight
against the leader (closed loop), or offers ``--rate`` puts per second (open
loop, still capped by the window; an op's latency counts from when it was due, so the
generator's own sleeps and stalls show in the numbers). ``embedded``: this process hosts a
``zraft.Node`` that takes leadership and drives ``apply_async`` from asyncio.

Both write one JSON result (see :meth:`Stats.to_json`) to ``--out``. The
measurement window is absolute wall-clock time (``--start-at`` + warmup), so
several workers started by one orchestrator measure the same interval. The
pipelined engine is protocol-agnostic: ``bench_pysyncobj.py`` reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

try:
    import zraft  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zraft import codec
from zraft.gc_tuning import tune_gc
from zraft.protocol import ClientReply, ClientRequest

BUCKET_S = 0.25  #: timeline resolution
MAX_SAMPLES = 200_000  #: latency samples kept per worker (reservoir)
MAX_WINDOW = 65_536  #: in-flight ops per worker
MAX_DURATION_S = 3_600.0
DRAIN_S = 3.0  #: after the window, wait this long for in-flight replies
MAX_RECV_BATCH = 4096  #: replies handled per poll wake-up
PACE_MS = 2  #: open loop: sleep at least this long; the ops due meanwhile go out as a burst


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply, whatever the system: enough to match it and react to errors."""

    req_id: int
    ok: bool
    error: str = ""
    leader_address: str = ""


class LoadProtocol(Protocol):
    """How one system frames a put and its reply on a DEALER socket."""

    def encode_put(self, req_id: int, key: str, value: bytes) -> bytes: ...

    def encode_puts(self, items: list[tuple[int, str]], value: bytes) -> bytes:
        """Many puts in one frame (only systems whose client protocol batches)."""
        ...

    def decode(self, frame: bytes) -> list[Reply]:
        """Every reply in a frame (a node batches the replies it sends to one client)."""
        ...


class ZraftProtocol:
    """``ClientRequest(apply put)`` with an exactly-once session, like ``zraft.Client``."""

    def __init__(self, cluster_id: str = "zraft") -> None:
        self.cluster_id = cluster_id
        self.client_id = os.urandom(16)
        self._seq = 0

    def encode_put(self, req_id: int, key: str, value: bytes) -> bytes:
        self._seq += 1
        req = ClientRequest(req_id, "apply", "put", (key, value), self.client_id, self._seq)
        return codec.encode(req, self.cluster_id)

    def encode_puts(self, items: list[tuple[int, str]], value: bytes) -> bytes:
        """One batch frame, as ``Client.apply_many`` sends it."""
        reqs = []
        for req_id, key in items:
            self._seq += 1
            reqs.append(
                ClientRequest(req_id, "apply", "put", (key, value), self.client_id, self._seq)
            )
        return codec.encode_batch(reqs, self.cluster_id)

    def decode(self, frame: bytes) -> list[Reply]:
        try:
            msgs = codec.decode_many(frame, self.cluster_id)
        except codec.DecodeError:
            return []
        return [
            Reply(m.req_id, m.ok, m.error, m.leader_address)
            for m in msgs
            if isinstance(m, ClientReply)
        ]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One worker's load. Times are wall-clock epoch seconds or durations in seconds."""

    start_at: float
    duration_s: float
    warmup_s: float = 1.0
    payload_bytes: int = 10
    window: int = 64
    rate_ops: float = 0.0  #: offered puts/s; 0 = closed loop (as fast as the window allows)
    batch: int = 1  #: puts per frame (> 1 only for protocols with encode_puts)
    op_timeout_s: float = 5.0
    key_space: int = 1000  #: distinct keys per worker: bounds the state machine's size
    worker_id: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        assert 0 < self.duration_s <= MAX_DURATION_S, "duration within limits"
        assert 0 <= self.warmup_s <= MAX_DURATION_S, "warmup within limits"
        assert 0 < self.window <= MAX_WINDOW, "window within limits"
        assert 0 < self.batch <= codec.MAX_BATCH, "batch within limits"
        assert 0 <= self.payload_bytes <= 1 << 20, "payload at most 1 MiB"
        assert self.rate_ops >= 0 and self.op_timeout_s > 0 and self.key_space > 0

    @property
    def measure_from(self) -> float:
        return self.start_at + self.warmup_s

    @property
    def measure_to(self) -> float:
        return self.start_at + self.warmup_s + self.duration_s


@dataclass
class Stats:
    """What a worker saw. Only ops that complete inside the measure window count."""

    measure_from: float
    measure_to: float
    seed: int = 0
    ok: int = 0
    sent: int = 0
    unsent: int = 0  #: offered (rate mode) but the window was full: not sent
    errors: dict[str, int] = field(default_factory=dict)
    samples_us: list[int] = field(default_factory=list)
    max_us: int = 0
    switches: int = 0
    timeline: dict[int, list[int]] = field(default_factory=dict)  #: bucket -> [n, sum_us, max_us]
    _seen: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def record_ok(self, done_wall: float, latency_s: float) -> None:
        us = int(latency_s * 1e6)
        bucket = self.timeline.setdefault(
            int((done_wall - self.measure_from) // BUCKET_S), [0, 0, 0]
        )
        bucket[0] += 1
        bucket[1] += us
        bucket[2] = max(bucket[2], us)
        if not self.measure_from <= done_wall < self.measure_to:
            return
        self.ok += 1
        self.max_us = max(self.max_us, us)
        self._seen += 1
        if len(self.samples_us) < MAX_SAMPLES:
            self.samples_us.append(us)
        else:
            j = self._rng.randrange(self._seen)
            if j < MAX_SAMPLES:
                self.samples_us[j] = us

    def record_error(self, error: str, count: int = 1) -> None:
        self.errors[error] = self.errors.get(error, 0) + count

    def to_json(self) -> dict[str, Any]:
        keys = sorted(self.timeline)
        return {
            "ok": self.ok,
            "sent": self.sent,
            "unsent": self.unsent,
            "errors": dict(self.errors),
            "measured_s": self.measure_to - self.measure_from,
            "max_us": self.max_us,
            "samples_us": self.samples_us,
            "switches": self.switches,
            "timeline": {
                "bucket_s": BUCKET_S,
                "t_s": [k * BUCKET_S for k in keys],
                "count": [self.timeline[k][0] for k in keys],
                "mean_us": [self.timeline[k][1] // max(1, self.timeline[k][0]) for k in keys],
                "max_us": [self.timeline[k][2] for k in keys],
            },
        }


class _Conn:
    """One DEALER to one endpoint at a time; switching drops the old socket (and its replies)."""

    def __init__(self, endpoints: list[str], hwm: int) -> None:
        assert endpoints, "at least one endpoint"
        self.endpoints = list(endpoints)
        self.current = 0
        self.hwm = hwm
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self._open(self.endpoints[0])

    def _open(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.connect(endpoint)
        return sock

    def switch(self, endpoint: str | None) -> None:
        """Go to ``endpoint`` (a leader hint) or, without one, the next known endpoint."""
        if endpoint and endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        if endpoint:
            self.current = self.endpoints.index(endpoint)
        else:
            self.current = (self.current + 1) % len(self.endpoints)
        self.sock.close(linger=0)
        self.sock = self._open(self.endpoints[self.current])

    def close(self) -> None:
        self.sock.close(linger=0)


def _wait_until(wall: float) -> None:
    """Block until the shared start time (process start-up, not test synchronisation)."""
    while (delay := wall - time.time()) > 0:
        time.sleep(min(delay, 0.05))


class _Pipeline:
    """The pipelined send/receive loop of one worker (closed or open loop)."""

    def __init__(self, proto: LoadProtocol, endpoints: list[str], cfg: LoadConfig) -> None:
        self.proto, self.cfg = proto, cfg
        self.conn = _Conn(endpoints, hwm=cfg.window + 16)
        self.stats = Stats(cfg.measure_from, cfg.measure_to, seed=cfg.seed)
        self.inflight: dict[int, float] = {}  # req_id -> perf_counter at send (insertion order)
        self.value = random.Random(cfg.seed).randbytes(cfg.payload_bytes)
        self.next_id = 1
        self.pause_until = 0.0
        self.last_reply = time.perf_counter()
        self.interval_s = 1.0 / cfg.rate_ops if cfg.rate_ops > 0 else 0.0
        self.next_send = 0.0

    def run(self) -> Stats:
        _wait_until(self.cfg.start_at)
        self.next_send = time.perf_counter()
        hard_end = self.cfg.measure_to + DRAIN_S
        try:
            while True:
                wall = time.time()
                sending = wall < self.cfg.measure_to
                if (not sending and not self.inflight) or wall >= hard_end:
                    break
                now = time.perf_counter()
                if sending and now >= self.pause_until:
                    self._issue(now)
                self._receive(self._wait_ms(now, sending))
                self._expire(time.perf_counter())
        finally:
            self.conn.close()
        if self.inflight:
            self.stats.record_error("unanswered", len(self.inflight))
        return self.stats

    def _issue(self, now: float) -> None:
        cfg = self.cfg
        while len(self.inflight) < cfg.window:
            n = min(cfg.window - len(self.inflight), cfg.batch)
            if self.interval_s:
                if self.next_send > now:
                    return
                n = min(n, int((now - self.next_send) / self.interval_s) + 1)  # the ops due
            due = self.next_send  # paced: latency counts from when the op was due
            ids = range(self.next_id, self.next_id + n)
            keys = [f"w{cfg.worker_id}:{i % cfg.key_space}" for i in ids]
            if n == 1:
                frame = self.proto.encode_put(ids[0], keys[0], self.value)
            else:
                frame = self.proto.encode_puts(list(zip(ids, keys, strict=True)), self.value)
            try:
                self.conn.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:  # not connected yet, or the pipe is full: these ops are skipped
                if self.interval_s:
                    self.stats.unsent += n
                    self.next_send += n * self.interval_s
                return
            if self.interval_s:
                for k, i in enumerate(ids):
                    self.inflight[i] = due + k * self.interval_s
                self.next_send += n * self.interval_s
            else:
                for i in ids:
                    self.inflight[i] = now
            self.next_id += n
            self.stats.sent += n
        if self.interval_s and self.next_send <= now:  # window full: the offered op is skipped
            skipped = int((now - self.next_send) / self.interval_s) + 1
            self.stats.unsent += skipped
            self.next_send += skipped * self.interval_s

    def _wait_ms(self, now: float, sending: bool) -> int:
        if not sending or len(self.inflight) >= self.cfg.window:
            return 20
        if self.interval_s:  # at least PACE_MS: no busy-spinning between paced sends
            return max(PACE_MS, min(20, int((self.next_send - now) * 1000)))
        return 2  # the window is not full only when a send hit zmq.Again: let it drain

    def _receive(self, wait_ms: int) -> None:
        if not self.conn.sock.poll(wait_ms, zmq.POLLIN):
            return
        now, wall = time.perf_counter(), time.time()
        for _ in range(MAX_RECV_BATCH):
            try:
                frame = self.conn.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            for reply in self.proto.decode(frame):
                if reply.req_id not in self.inflight:
                    continue
                sent_at = self.inflight.pop(reply.req_id)
                self.last_reply = now
                if reply.ok:
                    self.stats.record_ok(wall, now - sent_at)
                elif self._on_error(reply, now):
                    return

    def _on_error(self, reply: Reply, now: float) -> bool:
        """Count the error; True if the socket was switched (stop reading the old one)."""
        self.stats.record_error(reply.error)
        if reply.error in ("not_leader", "no_leader", "stopped"):
            self._switch(reply.leader_address or None, now)
            return True
        if reply.error == "busy":
            self.pause_until = now + 0.005
        return False

    def _switch(self, hint: str | None, now: float) -> None:
        self.stats.record_error("lost_on_switch", len(self.inflight))
        self.inflight.clear()
        self.stats.switches += 1
        self.conn.switch(hint)
        self.last_reply = now
        if not hint:
            self.pause_until = now + 0.05

    def _expire(self, now: float) -> None:
        expired = 0
        for sent_at in self.inflight.values():
            if now - sent_at < self.cfg.op_timeout_s:
                break
            expired += 1
        if not expired:
            return
        for rid in list(self.inflight)[:expired]:
            del self.inflight[rid]
        self.stats.record_error("timeout", expired)
        if now - self.last_reply >= self.cfg.op_timeout_s:  # the endpoint went silent
            self._switch(None, now)


def run_pipelined(proto: LoadProtocol, endpoints: list[str], cfg: LoadConfig) -> Stats:
    """Run one worker's load against ``endpoints`` (leader first) and return what it saw."""
    return _Pipeline(proto, endpoints, cfg).run()


def probe_write(
    proto: LoadProtocol, endpoints: list[str], timeout_s: float, attempt_s: float = 0.5
) -> tuple[float, str] | None:
    """Write to every endpoint in parallel until one commits; (perf_counter, endpoint) or None.

    Used for failover: the first committed write anywhere after a leader dies.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socks: dict[str, zmq.Socket[bytes]] = {}
    poller = zmq.Poller()
    for ep in endpoints:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep)
        socks[ep] = sock
        poller.register(sock, zmq.POLLIN)
    outstanding: dict[str, tuple[int, float]] = {}  # endpoint -> (req_id, sent_at)
    retry_at: dict[str, float] = dict.fromkeys(endpoints, 0.0)
    req_id, deadline = 1, time.perf_counter() + timeout_s
    try:
        while (now := time.perf_counter()) < deadline:
            for ep, sock in socks.items():
                pending = outstanding.get(ep)
                if (pending is None and now >= retry_at[ep]) or (
                    pending is not None and now - pending[1] > attempt_s
                ):
                    req_id += 1
                    try:
                        sock.send(proto.encode_put(req_id, "failover", b"x"), zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    outstanding[ep] = (req_id, now)
            for sock, _ in poller.poll(10):
                ep = next(e for e, s in socks.items() if s is sock)
                replies = proto.decode(sock.recv())
                pending = outstanding.get(ep)
                reply = next((r for r in replies if pending and r.req_id == pending[0]), None)
                if reply is None or pending is None:
                    continue
                if reply.ok:
                    return time.perf_counter(), ep
                del outstanding[ep]
                retry_at[ep] = time.perf_counter() + 0.02
        return None
    finally:
        for sock in socks.values():
            sock.close(linger=0)


# ---------------------------------------------------------------------------- embedded


async def _embedded_load(node: Any, cfg: LoadConfig, stats: Stats) -> None:
    """``cfg.window`` coroutines, each applying puts back to back through ``apply_async``."""
    from zraft.errors import ZraftError

    value = random.Random(cfg.seed).randbytes(cfg.payload_bytes)
    seq = itertools.count()  # keys as PySyncObj's embedded load: key_space keys in all

    async def one() -> None:
        while time.time() < cfg.measure_to:
            key = f"e:{next(seq) % cfg.key_space}"
            t0 = time.perf_counter()
            try:
                await node.apply_async("put", key, value, timeout=cfg.op_timeout_s)
            except ZraftError as exc:
                stats.record_error(exc.code)
                if exc.code in ("not_leader", "busy"):
                    await asyncio.sleep(0.01)
                continue
            stats.sent += 1
            stats.record_ok(time.time(), time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(cfg.window)))


def _take_leadership(node: Any, node_id: str, timeout_s: float) -> None:
    """Become leader: wait for an election, then ask the leader to hand over if needed."""
    from zraft.client import Client
    from zraft.errors import ZraftError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = node.status()
        if st.get("role") == "leader":
            return
        leader = st.get("leader") or ""
        peers = node.config.peers
        if leader and leader in peers:
            try:
                with Client([peers[leader]], timeout=2.0) as client:
                    client.transfer_leadership(node_id, timeout=2.0)
            except ZraftError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"{node_id} did not become leader within {timeout_s}s")


def run_embedded(args: argparse.Namespace, cfg: LoadConfig) -> dict[str, Any]:
    from zraft import logs
    from zraft.config import Config, parse_cluster
    from zraft.node import Node

    if args.log_file:
        logs.configure("json", args.log_file, "info")
    overrides: dict[str, Any] = {"fsync": args.fsync}
    peers = parse_cluster(args.cluster)
    if args.config:
        config = Config.from_toml(
            args.config, node_id=args.id, bind=peers[args.id], peers=peers,
            data_dir=args.data_dir, **overrides,
        )  # fmt: skip
    else:
        config = Config(args.id, peers[args.id], args.data_dir, peers=peers, **overrides)
    # as the README's embedding guide advises (PySyncObj's processes get the same settings)
    tune_gc()
    node = Node(config).start()
    try:
        _take_leadership(node, args.id, timeout_s=30.0)
        start = time.time() + 0.2
        cfg = LoadConfig(**{**_cfg_dict(cfg), "start_at": start})
        stats = Stats(cfg.measure_from, cfg.measure_to, seed=cfg.seed)
        _wait_until(cfg.start_at)
        term_before = int(node.status().get("term", 0))
        asyncio.run(_embedded_load(node, cfg, stats))
        st = node.status()
        # a new term during the load means an election (or a lost leadership)
        return {
            **stats.to_json(),
            "role": "leader",
            "terms_during_load": int(st.get("term", 0)) - term_before,
            "leader_at_end": st.get("role") == "leader",
        }
    finally:
        node.stop()


def _cfg_dict(cfg: LoadConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in LoadConfig.__dataclass_fields__}


# ---------------------------------------------------------------------------- CLI


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The load options every worker (zraft or PySyncObj) understands."""
    p.add_argument("--out", required=True, help="write the JSON result here")
    p.add_argument("--start-at", type=float, default=0.0, help="epoch seconds (0 = now)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--payload", type=int, default=10, help="value bytes")
    p.add_argument("--window", type=int, default=64, help="outstanding ops")
    p.add_argument("--rate", type=float, default=0.0, help="offered ops/s (0 = closed loop)")
    p.add_argument("--batch", type=int, default=1, help="puts per frame (zraft: apply_many)")
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--keys", type=int, default=1000, help="distinct keys")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)


def load_config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        start_at=args.start_at or time.time(),
        duration_s=args.duration,
        warmup_s=args.warmup,
        payload_bytes=args.payload,
        window=args.window,
        rate_ops=args.rate,
        batch=args.batch,
        op_timeout_s=args.op_timeout,
        key_space=args.keys,
        worker_id=args.worker,
        seed=args.seed,
    )


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write atomically: the orchestrator polls for the file."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(result))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    client = sub.add_parser("client", help="pipelined DEALER load against a cluster")
    client.add_argument("--endpoints", required=True, help="comma-separated, leader first")
    client.add_argument("--cluster-id", default="zraft")
    add_load_args(client)
    emb = sub.add_parser("embedded", help="host a Node, take leadership, load it in-process")
    emb.add_argument("--id", required=True)
    emb.add_argument("--cluster", required=True, help="n1=tcp://...,n2=...")
    emb.add_argument("--data-dir", required=True)
    emb.add_argument("--fsync", default="always", choices=["always", "never"])
    emb.add_argument("--config", default=None, help="zraft.toml")
    emb.add_argument("--log-file", default=None)
    add_load_args(emb)
    args = parser.parse_args(argv)
    cfg = load_config(args)
    if args.mode == "client":
        endpoints = [e for e in args.endpoints.split(",") if e]
        stats = run_pipelined(ZraftProtocol(args.cluster_id), endpoints, cfg)
        write_result(args.out, stats.to_json())
    else:
        write_result(args.out, run_embedded(args, cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
