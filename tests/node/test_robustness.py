"""Bad requests and bad handler results never kill a node (found in review)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import zraft
from zraft.launcher import free_ports

pytestmark = pytest.mark.process


class Odd(zraft.StateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    @zraft.command
    def make_set(self) -> Any:
        self.n += 1
        return {1, 2, 3}  # msgpack cannot carry a set

    @zraft.command
    def make_pair_keyed(self) -> Any:
        self.n += 1
        return {(1, 2): 3}  # packs, but reads back with a list key: unhashable

    @zraft.query
    def count(self) -> int:
        return self.n

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = int(data)


def _solo(tmp_path: Path, sm: zraft.StateMachine) -> tuple[zraft.Node, str]:
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    node = zraft.Node(
        zraft.Config(node_id="solo", bind=addr, peers={"solo": addr}, data_dir=str(tmp_path / "d")),
        sm,
    )
    return node, addr


def _leader(node: zraft.Node) -> None:
    deadline = time.monotonic() + 20
    while node.status()["role"] != "leader":
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.05)


def test_unencodable_result_is_an_app_error_and_snapshots_still_work(tmp_path: Path) -> None:
    node, addr = _solo(tmp_path, Odd())
    with node, zraft.Client([addr], timeout=10) as client:
        _leader(node)
        with pytest.raises(zraft.ApplicationError, match="cannot be encoded"):
            client.apply("make_set")
        assert client.query("count") == 1  # applied once, answered with an error
        assert node.take_snapshot(timeout=10) >= 1  # the session table still packs
        assert node.status()["role"] == "leader"


def test_a_result_that_packs_but_does_not_read_back_is_an_app_error(tmp_path: Path) -> None:
    """Recorded in the session table it would break every later snapshot's restore
    (the node could never start again) and every reply to the client."""
    node, addr = _solo(tmp_path, Odd())
    with node, zraft.Client([addr], timeout=10) as client:
        _leader(node)
        with pytest.raises(zraft.ApplicationError, match="cannot be encoded"):
            client.apply("make_pair_keyed")
        assert node.take_snapshot(timeout=10) >= 1
    restarted = zraft.Node(node.config, Odd())
    with restarted, zraft.Client([addr], timeout=10) as client:
        _leader(restarted)
        assert client.query("count") == 1


class FailingSnapshots(Odd):
    failing = True

    def snapshot(self) -> bytes:
        if self.failing:
            raise RuntimeError("no room for the state")
        return super().snapshot()


def test_take_snapshot_after_a_failed_one_writes_a_snapshot(tmp_path: Path) -> None:
    """A failed snapshot() must not count as taken: the next call writes one."""
    sm = FailingSnapshots()
    node, addr = _solo(tmp_path, sm)
    with node, zraft.Client([addr], timeout=10) as client:
        _leader(node)
        with pytest.raises(zraft.ApplicationError):
            client.apply("make_set")  # applied; its result is refused
        with pytest.raises(zraft.ZraftError, match="no room for the state"):
            node.take_snapshot(timeout=10)
        sm.failing = False
        index = node.take_snapshot(timeout=10)
        meta = node.storage.snapshot_meta()
        assert meta is not None and meta.index == index >= 1


def test_a_client_id_reused_by_a_later_client_gets_fresh_sequence_numbers(
    tmp_path: Path,
) -> None:
    """A process restarted with the same client_id started again at seq 1, and the
    cluster answered its new commands with the old ones' remembered results: writes
    silently dropped (found in review)."""
    node, addr = _solo(tmp_path, zraft.KV())
    with node:
        _leader(node)
        for run in (1, 2):
            with zraft.Client([addr], timeout=10, client_id=b"billing-service") as client:
                assert client.apply("incr", "k", 100) == 100 * run
                client.apply("put", "z", run)
                assert client.query("get", "z") == run


class Lookups(zraft.StateMachine):
    @zraft.query
    def by_id(self) -> Any:
        return {1: "alice", 2: "bob"}  # int keys: clients read them

    @zraft.query
    def tags(self) -> Any:
        return {"a", "b"}  # a set: msgpack cannot carry it


def test_a_reply_batch_with_one_unencodable_result_answers_each_and_survives(
    tmp_path: Path,
) -> None:
    """The batch fallback decoded its own replies strictly, so an int-keyed result beside
    an unencodable one crashed the reactor (found in review)."""
    import zmq

    from zraft import codec
    from zraft.protocol import ClientReply, ClientRequest

    node, addr = _solo(tmp_path, Lookups())
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    with node:
        _leader(node)
        reqs = [
            ClientRequest(i, "query", name, consistency="local")
            for i, name in enumerate(("by_id", "tags"))
        ]
        sock.send(codec.encode_batch(reqs, "zraft"))
        replies: dict[int, ClientReply] = {}
        while len(replies) < 2 and sock.poll(10_000):
            for msg in codec.decode_many(sock.recv(), "zraft", strict_map_key=False):
                assert isinstance(msg, ClientReply)
                replies[msg.req_id] = msg
        sock.close()
        assert replies[0].ok and replies[0].result == {1: "alice", 2: "bob"}
        assert not replies[1].ok and replies[1].error == "app_error"
        assert node.status()["role"] == "leader"


def test_a_frame_of_status_requests_does_not_compute_one_status_each(tmp_path: Path) -> None:
    """Thousands of status requests in a batch held the reactor for seconds (review)."""
    import zmq

    from zraft import codec
    from zraft.protocol import ClientReply, ClientRequest

    node, addr = _solo(tmp_path, zraft.KV())
    calls = {"n": 0}
    with node:
        _leader(node)
        real = node._status

        def counted() -> dict[str, Any]:
            calls["n"] += 1
            return real()

        node._status = counted  # type: ignore[method-assign]
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(addr)
        sock.send(codec.encode_batch([ClientRequest(i, "status") for i in range(2000)], "zraft"))
        answered = 0
        while answered < 2000 and sock.poll(10_000):
            replies = codec.decode_many(sock.recv(), "zraft", strict_map_key=False)
            assert all(isinstance(r, ClientReply) and r.ok for r in replies)
            answered += len(replies)
        sock.close()
        assert answered == 2000
        assert calls["n"] < 100, calls


def test_bad_member_ids_are_refused_not_fatal(tmp_path: Path) -> None:
    node, addr = _solo(tmp_path, zraft.KV())
    with node, zraft.Client([addr], timeout=10) as client:
        _leader(node)
        for bad_id, bad_addr in (
            ("", "tcp://127.0.0.1:1"),
            ("x" * 200, "tcp://127.0.0.1:1"),
            ("ok", "not-an-address"),
            ("ok", "tcp://" + "a" * 1100 + ":5000"),  # no follower could decode it
        ):
            with pytest.raises(zraft.ZraftError, match="add_member needs"):
                client.add_member(bad_id, bad_addr)
        client.apply("put", "alive", True)
        assert client.query("get", "alive") is True


def test_membership_is_capped_below_what_the_sockets_allow(tmp_path: Path) -> None:
    """Each member costs every node a socket (a context holds 1023): about 1020 learners
    crashed the leader, and again on every restart (found in review)."""
    from zraft.node import MAX_CLUSTER_MEMBERS

    node, addr = _solo(tmp_path, zraft.KV())
    with node, zraft.Client([addr], timeout=10) as client:
        _leader(node)
        for i in range(MAX_CLUSTER_MEMBERS - 1):
            node.add_member(f"x{i}", f"inproc://x{i}", voter=False, timeout=10)
        with pytest.raises(zraft.ZraftError, match="at most"):
            client.add_member("one-too-many", "inproc://more", voter=False)
        client.apply("put", "alive", True)
        assert node.status()["role"] == "leader"


def test_status_after_stop_answers_at_once(tmp_path: Path) -> None:
    node, _ = _solo(tmp_path, zraft.KV())
    node.start()
    _leader(node)
    node.stop()
    started = time.monotonic()
    assert node.status()["role"] == "stopped"
    assert time.monotonic() - started < 1.0
