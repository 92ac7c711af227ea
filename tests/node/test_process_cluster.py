"""Real node processes on loopback: elections, failover, catch-up, exactly-once, bad input."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import msgpack
import pytest
import zmq

import zraft
from zraft import codec
from zraft.client import Client
from zraft.errors import ApplicationError
from zraft.launcher import LocalCluster
from zraft.protocol import ClientReply, ClientRequest

pytestmark = pytest.mark.process


def _write_keys(client: Client, start: int, stop: int) -> None:
    for i in range(start, stop):
        client.apply("put", f"k{i}", i)


def test_three_nodes_elect_apply_failover_and_catch_up(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_for_leader(timeout=30)
    with cluster3.client(timeout=30) as client:
        _write_keys(client, 0, 50)
        # apply through a follower's endpoint: the client follows the leader hint
        follower = next(n for n in cluster3.nodes.values() if n.node_id != leader)
        with Client([follower.address], timeout=30) as via_follower:
            assert via_follower.apply("incr", "counter") == 1
        killed_at = time.monotonic()
        cluster3.kill(leader, signal.SIGKILL)
        new_leader = cluster3.wait_for_leader(timeout=30, exclude=leader)
        assert new_leader != leader
        # "a few election timeouts" (default max 1 s each); generous for a loaded CI box
        assert time.monotonic() - killed_at < 15
        _write_keys(client, 50, 80)
        for i in range(80):
            assert client.query("get", f"k{i}") == i, f"acknowledged write k{i} lost"
        cluster3.start(leader)
        commit = cluster3.status_of(new_leader)["commit"]
        cluster3.wait_applied(commit, [leader], timeout=30)
        assert client.query("get", "k79", consistency="linearizable") == 79


def test_five_nodes_survive_leader_kill(tmp_path: Path) -> None:
    with LocalCluster(5, base_dir=tmp_path / "c5") as cluster:
        leader = cluster.wait_for_leader(timeout=30)
        with cluster.client(timeout=30) as client:
            _write_keys(client, 0, 20)
            cluster.kill(leader)
            cluster.wait_for_leader(timeout=30, exclude=leader)
            _write_keys(client, 20, 40)
            assert [client.query("get", f"k{i}") for i in range(40)] == list(range(40))


def test_retry_with_lost_reply_applies_once(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_for_leader(timeout=30)
    address = cluster3.nodes[leader].address
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    client_id, seq = os.urandom(16), 1
    request = ClientRequest(1, "apply", "incr", ("once",), client_id, seq)
    # first attempt: it is applied, but the client never hears back (we drop the reply)
    first = ctx.socket(zmq.DEALER)
    first.setsockopt(zmq.LINGER, 0)
    first.connect(address)
    first.send(codec.encode(request, "zraft"))
    assert first.poll(30_000), "the first attempt got no reply at all"
    lost = codec.decode(first.recv(), "zraft")
    assert isinstance(lost, ClientReply) and lost.ok and lost.result == 1
    first.close()
    # the retry carries the same session and sequence number: it must return the first
    # result, not apply again
    with Client([address], client_id=client_id, timeout=30) as retry:
        reply = retry._exchange(
            address, ClientRequest(2, "apply", "incr", ("once",), client_id, seq), 10.0
        )
        assert isinstance(reply, ClientReply) and reply.ok and reply.result == 1
    with cluster3.client(timeout=30) as client:
        assert client.query("get", "once") == 1, "a retried command was applied twice"
        assert client.apply("incr", "once") == 2


def test_bad_input_is_dropped_and_node_keeps_serving(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_for_leader(timeout=30)
    target = cluster3.nodes[leader]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    garbage = [
        b"",
        os.urandom(64),
        msgpack.packb([1, "zraft", 3])[:-1],  # truncated
        msgpack.packb([1, "zraft", 999, 1, 2]),  # unknown type
        msgpack.packb([1, "zraft", 0, "x", None, [], {}, 1.5]),  # wrong types
        msgpack.packb([1, "other-cluster", 0]),  # wrong cluster id
        msgpack.packb("not a list"),
        b"\x00" * (2 << 20),  # a big frame of zeros
    ]
    sock = ctx.socket(zmq.DEALER)
    # close() must not discard what is still queued: on a loaded machine the connection
    # may not even be up yet when the last send returns (then nothing reached the node)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.connect(target.address)
    for g in garbage:
        sock.send(g)
    sock.send_multipart([b"a", b"b", b"c"])  # wrong frame count
    sock.close()
    raw = socket.create_connection(("127.0.0.1", int(target.address.rsplit(":", 1)[1])))
    raw.sendall(os.urandom(512))  # not even ZMTP
    raw.close()
    with cluster3.client(timeout=30) as client:
        assert client.apply("put", "after-garbage", 1) is None
        assert client.query("get", "after-garbage") == 1
    assert cluster3.nodes[leader].alive()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "bad_message_dropped" in target.log_file.read_text():
            break
        time.sleep(0.1)
    assert "bad_message_dropped" in target.log_file.read_text()


def test_apply_many_batches_in_order_with_app_errors_in_place(cluster3: LocalCluster) -> None:
    cluster3.wait_for_leader(timeout=30)
    with cluster3.client(timeout=30) as client:
        client.apply("put", "text", "not a number")
        commands = [("incr", ("many",)) for _ in range(300)]  # two chunks of <= 256
        commands.insert(7, ("incr", ("text",)))  # its handler raises
        commands.insert(9, ("no_such", ()))  # refused: the rest of the batch still applies
        results = client.apply_many(commands)
        assert len(results) == 302
        assert isinstance(results[7], ApplicationError)
        assert isinstance(results[9], zraft.NoSuchCommand)
        assert [r for i, r in enumerate(results) if i not in (7, 9)] == list(range(1, 301))
        assert client.query("get", "many") == 300
        assert client.apply_many([]) == []
        with pytest.raises(ValueError, match="chunk"):
            client.apply_many(commands, chunk=0)


def test_apply_many_retry_answers_from_the_session_not_a_second_apply(
    cluster3: LocalCluster,
) -> None:
    cluster3.wait_for_leader(timeout=30)
    with cluster3.client(timeout=30) as client:
        seqs = [next(client._seq) for _ in range(3)]
        batch = [("incr", ("twice",)), ("cas", ("flag", None, 1)), ("incr", ("twice",))]
        first = client._request_many(batch, seqs, 30)
        again = client._request_many(batch, seqs, 30)  # a retry after a lost reply
        assert first == again == [1, True, 2]
        assert client.query("get", "twice") == 2, "a retried batch was applied twice"


def test_a_whole_cluster_restart_with_an_apply_backlog_keeps_its_first_leader(
    tmp_path: Path,
) -> None:
    """After a restart every node has its whole log to apply. Applied in one reactor
    turn (about a second here for 80k entries), that silenced each new leader for
    longer than an election timeout, and the cluster went through two or three more
    elections before the backlog was gone. Now a Ready carries a slice of it and a
    turn stops handling Readies at max_turn_ms, so heartbeats go out between slices."""
    config = tmp_path / "zraft.toml"
    config.write_text("snapshot_entries = 0\n")  # the whole log is the backlog
    backlog = 80_000
    with LocalCluster(3, base_dir=tmp_path / "c", config_toml=str(config)) as cluster:
        cluster.start()
        cluster.wait_for_leader(30)
        with cluster.client(timeout=30) as client:
            puts = [("put", (f"k{i % 5000}", b"v" * 10)) for i in range(backlog)]
            for lo in range(0, backlog, 10_240):
                client.apply_many(puts[lo : lo + 10_240], chunk=256)
        term_before = max(s["term"] for s in cluster.statuses(3.0).values())
        for node_id in cluster.nodes:
            cluster.stop(node_id)
        cluster.start()
        cluster.wait_for_leader(30)
        deadline = time.monotonic() + 60
        while True:
            statuses = cluster.statuses(3.0)
            if len(statuses) == 3 and all(s["applied"] >= backlog for s in statuses.values()):
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.2)  # polling a process cluster, not synchronising the test
    elections = max(s["term"] for s in statuses.values()) - term_before
    assert elections <= 2, f"{elections} elections after the restart (one, or two on a split vote)"


def test_a_leader_stopped_and_continued_keeps_its_term_when_no_other_quorum_formed(
    cluster3: LocalCluster,
) -> None:
    """One follower down, the leader SIGSTOPped for three times the election timeout: the
    other follower cannot win an election, so the resumed leader must not call one
    either (Raft.catch_up) and writes go on in the same term."""
    leader = cluster3.wait_for_leader(timeout=30)
    down, live = (n for n in cluster3.nodes if n != leader)
    with cluster3.client(timeout=30) as client:
        _write_keys(client, 0, 5)
        cluster3.kill(down)
        term = cluster3.status_of(leader)["term"]
        cluster3.kill(leader, signal.SIGSTOP)
        try:
            time.sleep(3.0)  # the fault: the live follower times out and pre-votes in vain
        finally:
            cluster3.kill(leader, signal.SIGCONT)
        _write_keys(client, 5, 10)
        resumed = cluster3.status_of(leader)
        assert resumed["role"] == "leader" and resumed["term"] == term
        assert cluster3.status_of(live)["term"] == term
        assert [client.query("get", f"k{i}") for i in range(10)] == list(range(10))
