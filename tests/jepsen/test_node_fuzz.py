"""Malformed input at scale: hypothesis throws mutated messages at live nodes' ROUTERs.

Valid messages are encoded with :func:`zraft.codec.encode`, then bytes are
flipped, messages truncated or spliced, msgpack fields swapped for other
values, frames added or dropped, for a bounded time, at every node of a live
3-node cluster. The sender is an ``intruder`` DEALER whose routing id matches
no ``frm`` it claims, so every Raft message must die at the transport, and
client queries (read-only) must be answered or dropped. Afterwards every node
process is alive, the cluster has a leader, every node's state machine holds
exactly what the valid client wrote, and writes still work.

Two deterministic regression tests cover a *non-member* sending well-formed Raft
messages as itself (no CURVE): the gauntlet found that they reached the core;
nodes now drop Raft messages from ids outside their membership.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from zraft import codec
from zraft.client import Client
from zraft.core.types import (
    AppendEntries,
    AppendResponse,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from zraft.launcher import LocalCluster
from zraft.protocol import ClientRequest

pytestmark = pytest.mark.process

FUZZ_S = 12.0  #: wall-clock budget for generating and sending
MAX_EXAMPLES = 8000
CLUSTER_ID = "zraft"
KEYS = {f"k{i}": f"v{i}" for i in range(5)}
SENDERS = (b"intruder",)

#: Command payloads that must never change the state: wrong version, not an array,
#: wrong arity, unknown command, args not a list, plain garbage.
BAD_COMMANDS: tuple[bytes, ...] = (
    b"",
    b"\xc1\xff\x00garbage",
    msgpack.packb([99, b"fz", 1, "put", ["k0", "EVIL"]], use_bin_type=True),
    msgpack.packb({"put": ["k0", "EVIL"]}, use_bin_type=True),
    msgpack.packb([1, b"fz", 1, "put", ["k0"]], use_bin_type=True),
    msgpack.packb([1, b"fz", 2, "cas", ["k1", "v1"]], use_bin_type=True),
    msgpack.packb([1, b"fz", 3, "no_such_command", ["k0", "EVIL"]], use_bin_type=True),
    msgpack.packb([1, b"fz", 4, "put", "k0EVIL"], use_bin_type=True),
    msgpack.packb([1, b"fz", -5, "put", ["k0", "EVIL"]], use_bin_type=True),
)


class Target:
    """What the builders need to know about one node: its id and where its log is."""

    def __init__(self, node_id: str, term: int, last_index: int) -> None:
        self.node_id, self.term, self.last_index = node_id, term, last_index


def _builders(frm: str) -> list[Callable[[Target, int, int], Any]]:
    """Valid messages from ``frm``; ``dt`` shifts the term, ``k`` picks a bad payload."""

    def entries(t: Target, dt: int, k: int) -> tuple[Entry, ...]:
        base = t.last_index + 1 + k % 3
        return tuple(
            Entry(
                t.term + dt, base + i, EntryType.NORMAL, BAD_COMMANDS[(k + i) % len(BAD_COMMANDS)]
            )
            for i in range(1 + k % 3)
        )

    def append(t: Target, dt: int, k: int) -> Any:
        es = entries(t, dt, k)
        prev = es[0].index - 1
        return AppendEntries(
            t.term + dt, frm, t.node_id, prev, t.term + dt - (k % 2), es, prev + len(es)
        )

    meta = SnapshotMeta(7, 1, Membership(voters={frm: "tcp://127.0.0.1:1"}), 3, 0)
    return [
        append,
        lambda t, dt, k: RequestVote(t.term + dt, frm, t.node_id, 10**6, t.term + dt, bool(k % 2)),
        lambda t, dt, k: VoteResponse(t.term + dt, frm, t.node_id, True, bool(k % 2)),
        lambda t, dt, k: Heartbeat(t.term + dt, frm, t.node_id, t.last_index + 5, b"ctx" * (k % 2)),
        lambda t, dt, k: HeartbeatResponse(t.term + dt, frm, t.node_id, b"\x00\x01"),
        lambda t, dt, k: AppendResponse(t.term + dt, frm, t.node_id, t.last_index + 9, bool(k % 2)),
        lambda t, dt, k: InstallSnapshot(t.term + dt, frm, t.node_id, meta, 0, b"abc", True),
        lambda t, dt, k: SnapshotResponse(t.term + dt, frm, t.node_id, 7, 3, True),
        lambda t, dt, k: TimeoutNow(t.term + dt, frm, t.node_id),
        lambda t, dt, k: ClientRequest(k + 1, "query", "get", ("k0",)),
        lambda t, dt, k: ClientRequest(k + 1, "status"),
        lambda t, dt, k: ClientRequest(k + 1, "members"),
    ]


_wire_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.integers(0, 5), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def mutations(draw: st.DrawFn, encoded: bytes, other: bytes) -> list[bytes]:
    """One way to break ``encoded``; returns the frames to send after the routing id."""
    how = draw(st.sampled_from(["flip", "truncate", "splice", "field", "frames", "valid"]))
    data = bytearray(encoded)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "splice":
        data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]
    elif how == "field":
        raw = msgpack.unpackb(encoded, raw=False, strict_map_key=False)
        raw[draw(st.integers(0, len(raw) - 1))] = draw(_wire_values)
        try:
            data = bytearray(msgpack.packb(raw, use_bin_type=True))
        except (OverflowError, TypeError, ValueError):
            data = bytearray(encoded[:-1])
    elif how == "frames":
        extra = draw(st.lists(st.binary(max_size=16), min_size=0, max_size=3))
        return [bytes(data), *extra] if extra else [b""]
    return [bytes(data)]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    base = Path(tempfile.mkdtemp(prefix="zraft-fuzz-"))
    c = LocalCluster(3, base_dir=base / "c", cluster_id=CLUSTER_ID)
    try:
        c.start()
        yield c
    finally:
        c.close()  # every process ended by PID
        shutil.rmtree(base, ignore_errors=True)


def _dealers(ctx: zmq.Context[Any], cluster: LocalCluster) -> dict[tuple[bytes, str], Any]:
    socks: dict[tuple[bytes, str], Any] = {}
    for ident in SENDERS:
        for nid, node in cluster.nodes.items():
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, ident)
            s.setsockopt(zmq.SNDHWM, 10_000)
            s.setsockopt(zmq.RCVHWM, 10)
            s.connect(node.address)
            socks[(ident, nid)] = s
    return socks


def _state_everywhere(cluster: LocalCluster, commit: int) -> dict[str, dict[str, Any]]:
    """Every node's local view of every key once it applied ``commit``."""
    cluster.wait_applied(commit, timeout=30)
    views: dict[str, dict[str, Any]] = {}
    for nid, node in cluster.nodes.items():
        with Client([node.address], cluster_id=CLUSTER_ID, timeout=10) as one:
            keys = one.query("keys", consistency="local")
            views[nid] = {k: one.query("get", k, consistency="local") for k in keys}
    return views


def _event_counts(cluster: LocalCluster) -> dict[str, int]:
    """How the nodes reacted (drop reasons, role changes), for the test's output."""
    counts: dict[str, int] = {}
    for path in sorted((cluster.base_dir / "logs").glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            name = str(ev.get("event", "?"))
            if name == "bad_message_dropped":
                name += ":" + str(ev.get("reason"))
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def test_live_nodes_survive_mutated_messages(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader(timeout=30)
    with cluster.client(timeout=30) as client:
        for k, v in KEYS.items():
            client.apply("put", k, v)
    sts = cluster.statuses()
    targets = {nid: Target(nid, s["term"], s["last_index"]) for nid, s in sts.items()}
    ctx: zmq.Context[Any] = zmq.Context()
    socks = _dealers(ctx, cluster)
    sent = [0]
    end = time.monotonic() + FUZZ_S

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(SENDERS))
        nid = data.draw(st.sampled_from(sorted(targets)))
        frm = data.draw(st.sampled_from(["n1", "n2", "n3", "n9"]))
        builders = _builders(frm)
        dt = data.draw(st.sampled_from([0, 0, 1, 2, 5, 1000]))
        k = data.draw(st.integers(0, 50))
        msg = builders[data.draw(st.integers(0, len(builders) - 1))](targets[nid], dt, k)
        other = codec.encode(builders[k % len(builders)](targets[nid], dt, k), CLUSTER_ID)
        frames = data.draw(mutations(codec.encode(msg, CLUSTER_ID), other))
        if time.monotonic() > end:  # after the draws: hypothesis wants them the same each time
            return
        try:
            socks[(ident, nid)].send_multipart(frames, zmq.NOBLOCK)
            sent[0] += 1
        except zmq.Again:
            pass

    try:
        fuzz()
        print(f"fuzz: sent {sent[0]} messages; node log events: {_event_counts(cluster)}")
        assert sent[0] > 100, f"only {sent[0]} messages went out"
        dead = {
            nid: n.proc.returncode
            for nid, n in cluster.nodes.items()
            if n.proc is not None and not n.alive()
        }
        assert not dead, f"nodes died under fuzzing: {dead}; logs in {cluster.base_dir}/logs"
        leader = cluster.wait_for_leader(timeout=30)
        with cluster.client(timeout=30) as client:
            for k, v in KEYS.items():
                assert client.query("get", k) == v, f"{k} changed by malformed input"
            client.apply("put", "after", "fuzz")
            assert client.query("get", "after") == "fuzz"
        commit = cluster.status_of(leader)["commit"]
        want = {**KEYS, "after": "fuzz"}
        views = _state_everywhere(cluster, commit)
        for nid, view in views.items():
            assert view == want, f"{nid}'s state machine diverged: {view}"
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()


# --------------------------------------------------------------------------- non-member repros


def _send_as(cluster: LocalCluster, ident: bytes, node_id: str, msg: Any) -> None:
    """Send one message from a DEALER named ``ident`` and wait until it has left."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 2000)  # close() waits for delivery, up to 2 s
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.connect(cluster.nodes[node_id].address)
        assert s.poll(5000, zmq.POLLOUT), "could not connect"
        s.send(codec.encode(msg, CLUSTER_ID))
        s.close()
    finally:
        ctx.term()


def test_non_member_append_in_current_term_does_not_split_a_follower(
    cluster: LocalCluster,
) -> None:
    leader = cluster.wait_for_leader(timeout=30)
    with cluster.client(timeout=30) as client:
        client.apply("put", "k0", "v0")
        commit = cluster.status_of(leader)["commit"]
        cluster.wait_applied(commit, timeout=30)
        victim = next(n for n in sorted(cluster.nodes) if n != leader)
        st_v = cluster.status_of(victim)
        last = st_v["last_index"]
        forged = AppendEntries(
            st_v["term"],
            "n9",
            victim,
            last,
            st_v["term"],
            (Entry(st_v["term"], last + 1, EntryType.NORMAL, BAD_COMMANDS[1]),),
            last + 1,
        )
        _send_as(cluster, b"n9", victim, forged)
        client.apply("put", "k1", "v1")
        commit = cluster.status_of(leader)["commit"]
        cluster.wait_applied(commit, timeout=15)  # the victim must catch up again
    with Client([cluster.nodes[victim].address], cluster_id=CLUSTER_ID, timeout=10) as one:
        got = {k: one.query("get", k, consistency="local") for k in ("k0", "k1")}
    assert got == {"k0": "v0", "k1": "v1"}, f"{victim}'s state diverged from the leader's"


def test_non_member_max_term_does_not_brick_the_cluster(cluster: LocalCluster) -> None:
    cluster.wait_for_leader(timeout=30)
    for nid in sorted(cluster.nodes):
        _send_as(cluster, b"n9", nid, Heartbeat(2**63 - 1, "n9", nid, 0))
    cluster.wait_for_leader(timeout=15)
    with cluster.client(timeout=15) as client:
        client.apply("put", "k0", "after")
        assert client.query("get", "k0") == "after"
