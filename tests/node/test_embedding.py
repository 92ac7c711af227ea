"""Embedding zraft.Node in-process with custom state machines, threads and asyncio."""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zraft
from zraft.launcher import free_ports

pytestmark = pytest.mark.process


class Counter(zraft.StateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    @zraft.command
    def add(self, n: int) -> int:
        if n < 0:
            raise ValueError("only non-negative increments")
        self.value += n
        return self.value

    @zraft.query
    def read(self) -> int:
        return self.value

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        self.value = int(data)


def _solo_config(data_dir: Path, **overrides: Any) -> zraft.Config:
    """A single-node cluster on a free loopback port."""
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    return zraft.Config(
        node_id="solo", bind=addr, peers={"solo": addr}, data_dir=str(data_dir), **overrides
    )


def _single(tmp_path: Path, sm: zraft.StateMachine) -> zraft.Node:
    return zraft.Node(_solo_config(tmp_path / "solo"), sm)


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[zraft.Node]]:
    yield from _trio(tmp_path)


def _trio(
    tmp_path: Path, per_node: dict[str, dict[str, Any]] | None = None, **options: Any
) -> Iterator[list[zraft.Node]]:
    ports = free_ports(3)
    peers = {f"n{i}": f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    nodes = [
        zraft.Node(
            zraft.Config(
                node_id=nid,
                bind=addr,
                peers=peers,
                data_dir=str(tmp_path / nid),
                **(options | (per_node or {}).get(nid, {})),
            ),
            Counter(),
        )
        for nid, addr in peers.items()
    ]
    for n in nodes:
        n.start()
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _wait_leader(nodes: list[zraft.Node], timeout_s: float = 20.0) -> zraft.Node:
    leader_seen = threading.Event()
    for n in nodes:
        n.on("leader_change", lambda ev: leader_seen.set() if ev.value else None)
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for n in nodes:
            if n.status()["role"] == "leader":
                return n
        leader_seen.wait(0.05)
    raise AssertionError("no leader elected")


def _wait_until(done: Any, what: str, timeout_s: float = 20.0) -> None:
    """Poll a condition of running nodes (process-level: a bound, not a sleep to sync)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_single_node_commands_queries_errors_and_events(tmp_path: Path) -> None:
    events: list[Any] = []
    sm = Counter()
    node = _single(tmp_path, sm)
    node.on("*", events.append)
    with node:
        _wait_leader([node])
        assert node.apply("add", 2, timeout=10) == 2
        assert node.apply("add", 3, timeout=10) == 5
        with pytest.raises(zraft.ApplicationError, match="non-negative"):
            node.apply("add", -1, timeout=10)
        assert node.apply("add", 1, timeout=10) == 6  # the handler error was not fatal
        with pytest.raises(zraft.NoSuchCommand):
            node.apply("nope", timeout=10)
        assert node.query("read") == 6
        assert node.query("read", consistency="local") == 6
        last = node.status()["last_index"]
        with pytest.raises(TypeError, match="map keys must be str or bytes"):
            node.apply("add", {"ok": {1: 2}}, timeout=10)  # every node would skip it
        assert node.status()["last_index"] == last, "refused before it was proposed"
        st = node.status()
        assert st["role"] == "leader" and st["applied"] >= 4 and st["voters"] == ["solo"]
        assert node.take_snapshot(timeout=10) >= 4
    names = {e.name for e in events}
    assert {"state_change", "leader_change", "commit"} <= names


def test_runtime_registered_handlers(tmp_path: Path) -> None:
    sm = zraft.StateMachine()
    log: list[str] = []

    def append(item: str) -> int:
        log.append(item)
        return len(log)

    sm.register_command("append", append)
    sm.register_query("items", lambda: list(log))
    with _single(tmp_path, sm) as node:
        _wait_leader([node])
        assert node.apply("append", "a", timeout=10) == 1
        assert node.apply("append", "b", timeout=10) == 2
        assert node.query("items") == ["a", "b"]
        # no snapshot(): asking for one is a definite failure, not "busy, retry later"
        with pytest.raises(zraft.CommandFailed, match="does not implement snapshot"):
            node.take_snapshot(timeout=10)
        # a handler's exception type travels with its ApplicationError
        with pytest.raises(zraft.ApplicationError) as failed:
            node.apply("append", "a", "too many", timeout=10)
        assert failed.value.exc_type == "TypeError"
        # moving a member is remove + add: "already a member" would hide the new address
        with pytest.raises(zraft.CommandFailed, match="to move it, remove it"):
            node.add_member("solo", "tcp://127.0.0.1:1", timeout=10)


def test_two_clients_sharing_an_id_never_get_each_others_results(tmp_path: Path) -> None:
    import itertools

    with _single(tmp_path, Counter()) as node:
        _wait_leader([node])
        clients = [zraft.Client([node.config.address], client_id=b"shared", timeout=10)]
        clients.append(zraft.Client([node.config.address], client_id=b"shared", timeout=10))
        for c in clients:
            c._seq = itertools.count(1000)  # the same numbers, as after a clock step back
        try:
            assert clients[0].apply("add", 5) == 5
            with pytest.raises(zraft.CommandFailed, match="came with another command"):
                clients[1].apply("add", 7)  # was answered 5: seq 1000's remembered result
            assert node.query("read") == 5
        finally:
            for c in clients:
                c.close()


def test_a_recurring_bad_snapshot_copy_is_logged_at_powers_of_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader resending a damaged snapshot made a follower log every copy (388 lines in
    10 s, found in review): 1, 2, 4, 8... of them now say it, with the count."""
    import concurrent.futures

    from structlog.testing import capture_logs

    from zraft.core import Membership, SnapshotMeta

    with _single(tmp_path, Counter()) as node:
        _wait_leader([node])
        monkeypatch.setattr(node.storage, "finish_staged_snapshot", lambda meta: False)
        monkeypatch.setattr(node.core, "snapshot_failed", lambda meta: None)
        monkeypatch.setattr(node, "_log_holds", lambda index, term: False)
        meta = SnapshotMeta(10, 1, Membership(voters={"solo": "x"}), 4, 0)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def reject_many() -> None:
            for _ in range(9):
                node._verify_staged_snapshot(meta)
            done.set_result(None)

        with capture_logs() as logs:
            node._post(reject_many)
            done.result(timeout=10)
    counts = [e["count"] for e in logs if e["event"] == "snapshot_rejected"]
    assert counts == [1, 2, 4, 8]


def test_restart_restores_state(tmp_path: Path) -> None:
    node = _single(tmp_path, Counter())
    with node:
        _wait_leader([node])
        for _ in range(10):
            node.apply("add", 1, timeout=10)
        node.take_snapshot(timeout=10)
        node.apply("add", 5, timeout=10)
    again = zraft.Node(node.config, Counter())
    with again:
        _wait_leader([again])
        assert again.query("read") == 15


def test_a_node_restarted_at_another_address_says_peers_cannot_find_it(
    tmp_path: Path,
) -> None:
    from structlog.testing import capture_logs

    node = _single(tmp_path, Counter())
    with node:
        _wait_leader([node])
    moved = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    cfg = node.config
    again = zraft.Node(
        zraft.Config(node_id="solo", bind=moved, peers={"solo": moved}, data_dir=cfg.data_dir),
        Counter(),
    )
    with capture_logs() as logs, again:
        pass
    warned = [e for e in logs if e["event"] == "address_differs_from_membership"]
    assert warned and warned[0]["member_address"] == cfg.bind
    assert warned[0]["configured"] == moved


def test_three_embedded_nodes_and_not_leader_hint(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)
    assert leader.apply("add", 7, timeout=10) == 7
    follower = next(n for n in trio if n is not leader)
    with pytest.raises(zraft.NotLeaderError) as info:
        follower.apply("add", 1, timeout=5)
    assert info.value.leader in ("", leader.config.node_id)
    results: list[int] = []

    def worker() -> None:
        for _ in range(20):
            results.append(leader.apply("add", 1, timeout=20))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8, 88))
    assert leader.query("read") == 87


def test_transfer_answers_once_done_and_never_picks_a_dead_voter(
    trio: list[zraft.Node],
) -> None:
    """Thesis §3.10 as the caller sees it: transfer_leadership returns once the leader has
    stepped down for its target; a target that cannot take over is an error, not a
    "started" that silently comes to nothing."""
    import time

    leader = _wait_leader(trio)
    leader.apply("add", 1, timeout=10)
    dead = max(n.config.node_id for n in trio if n is not leader)  # the old tie-break chose it
    next(n for n in trio if n.config.node_id == dead).stop()
    time.sleep(0.6)  # a process-level test: let more than an election timeout pass
    with pytest.raises(zraft.CommandFailed, match=f"transfer to {dead} gave up"):
        leader.transfer_leadership(dead, timeout=10)
    assert leader.status()["role"] == "leader", "it still leads, and said so"
    target = leader.transfer_leadership(timeout=10)
    assert target != dead and leader.status()["role"] != "leader", "handed over on return"
    new = next(n for n in trio if n.config.node_id == target)
    deadline = time.monotonic() + 10
    while new.status()["role"] != "leader":
        assert time.monotonic() < deadline, "the target did not take over"
        time.sleep(0.02)
    assert new.transfer_leadership(target, timeout=10) == target  # it leads already


def test_transfer_without_target_waits_for_a_voter_to_answer(trio: list[zraft.Node]) -> None:
    """A leader elected a moment ago has no heartbeat answer yet to pick a target by:
    a target-less transfer waits for one (up to an election timeout) instead of failing."""
    leader = _wait_leader(trio)
    leader._post(leader._hb_answered.clear)  # as in the first heartbeat of a new term
    target = leader.transfer_leadership(timeout=10)
    assert target != leader.config.node_id and leader.status()["role"] != "leader"


def test_transfer_from_a_lone_voter_fails_at_once(tmp_path: Path) -> None:
    with _single(tmp_path, Counter()) as node:
        _wait_leader([node])
        with pytest.raises(zraft.CommandFailed, match="no other voter to hand leadership to"):
            node.transfer_leadership(timeout=10)
        assert node.status()["role"] == "leader"


def test_asyncio_apply_and_query(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)

    async def main() -> tuple[list[int], int]:
        done = await asyncio.gather(*(leader.apply_async("add", 1, timeout=20) for _ in range(50)))
        return list(done), await leader.query_async("read")

    done, value = asyncio.run(main())
    assert sorted(done) == list(range(1, 51)) and value == 50


def test_asyncio_cancelled_waiters_do_not_disturb_the_others(trio: list[zraft.Node]) -> None:
    """Outcomes reach a loop in batches; a cancelled awaiter's slot is skipped, not misrouted."""
    leader = _wait_leader(trio)

    async def main() -> tuple[list[Any], int]:
        tasks = [asyncio.ensure_future(leader.apply_async("add", 1, timeout=20)) for _ in range(40)]
        for t in tasks[::4]:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return list(done), await leader.query_async("read")

    done, value = asyncio.run(main())
    results = [r for r in done if isinstance(r, int)]
    cancelled = [r for r in done if isinstance(r, asyncio.CancelledError)]
    assert len(cancelled) == 10 and len(results) == 30
    assert len(set(results)) == 30, "each live awaiter got its own command's result"
    # a cancelled awaiter stops waiting; its command may still commit
    assert 30 <= value <= 40 and max(results) <= value


def test_asyncio_loops_in_several_threads_and_handler_errors(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)
    out: dict[int, list[Any]] = {}

    def worker(w: int) -> None:
        async def main() -> list[Any]:
            coros = [leader.apply_async("add", -1 if i == 3 else 1, timeout=20) for i in range(25)]
            return list(await asyncio.gather(*coros, return_exceptions=True))

        out[w] = asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(out) == [0, 1, 2, 3]
    errors = [r for rs in out.values() for r in rs if isinstance(r, zraft.ApplicationError)]
    values = sorted(r for rs in out.values() for r in rs if isinstance(r, int))
    assert len(errors) == 4 and "non-negative" in str(errors[0])
    assert values == list(range(1, 97))


def test_calls_racing_with_stop_are_all_answered(tmp_path: Path) -> None:
    """Nothing waits forever: a command queued around stop() gets an answer or an error."""
    node = _single(tmp_path, Counter()).start()
    _wait_leader([node])
    answers: list[Any] = []

    async def hammer() -> None:
        async def one() -> None:
            while True:  # until the node says it stopped
                try:
                    answers.append(await node.apply_async("add", 1, timeout=30))
                except zraft.NodeStopped as exc:
                    answers.append(exc)
                    return
                except zraft.ZraftError as exc:
                    answers.append(exc)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(200))), timeout=20)

    t = threading.Thread(target=node.stop)
    loop = asyncio.new_event_loop()
    try:
        loop.call_later(0.05, t.start)
        loop.run_until_complete(hammer())
    finally:
        loop.close()
        t.join(30)
    assert sum(1 for a in answers if isinstance(a, int)) > 0
    assert sum(1 for a in answers if isinstance(a, zraft.NodeStopped)) == 200

    # the narrowest window, made deterministic: a command that reaches the queue after
    # the reactor's final drain (its caller passed the running check just before)
    import concurrent.futures
    import time

    late: concurrent.futures.Future[Any] = concurrent.futures.Future()
    node._submit(b"late", late.set_result, time.monotonic() + 5, None)
    assert late.result(timeout=5).error == "stopped"
    with pytest.raises(zraft.NodeStopped):
        asyncio.run(node.apply_async("add", 1))


class Slow(Counter):
    @zraft.command
    def crawl(self, seconds: float) -> float:
        """A handler that holds the reactor (what a slow user handler does to a node)."""
        import time

        time.sleep(seconds)
        return seconds


class Reentrant(Counter):
    """Handlers that misuse the node: call it back, or raise a BaseException."""

    node: zraft.Node

    @zraft.query
    def nested(self) -> Any:
        return self.node.query("read", consistency="local", timeout=5)

    @zraft.command
    def cancel(self) -> None:
        import asyncio

        raise asyncio.CancelledError("a handler's BaseException")


def test_handlers_calling_the_node_or_raising_base_exceptions_do_not_stop_it(
    tmp_path: Path,
) -> None:
    import time

    sm = Reentrant()
    with zraft.Node(_solo_config(tmp_path / "solo"), sm) as node:
        sm.node = node
        _wait_leader([node])
        started = time.monotonic()
        with pytest.raises(zraft.ApplicationError, match="own reactor thread"):
            node.query("nested", timeout=10)
        assert time.monotonic() - started < 2, "refused at once, not after the call's timeout"
        with pytest.raises(zraft.ApplicationError, match="CancelledError"):
            node.apply("cancel", timeout=10)
        assert node.apply("add", 1, timeout=10) == 1
        last = node.status()["last_index"]
    with zraft.Node(_solo_config(tmp_path / "solo"), Reentrant()) as again:  # replays "cancel"
        _wait_leader([again])
        assert again.status()["applied"] >= last and again.query("read") == 1


def test_a_slow_turn_is_logged_with_where_the_time_went(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    cfg = _solo_config(tmp_path, slow_turn_ms=100)
    with capture_logs() as logs, zraft.Node(cfg, Slow()) as node:
        _wait_leader([node])
        node.apply("add", 1, timeout=10)
        # (a busy host may make a first fsync or election turn slow: not the command's)
        applying = [e for e in logs if e["event"] == "slow_turn" and e["apply_ms"] >= 100]
        assert not applying, "a quick command is quiet"
        node.apply("crawl", 0.3, timeout=10)
    slow = [e for e in logs if e["event"] == "slow_turn" and e["apply_ms"] >= 290]
    assert slow, "the 300 ms handler made a turn longer than slow_turn_ms"
    assert slow[0]["total_ms"] >= 300, slow[0]


async def _behind_a_crawl(
    node: zraft.Node, crawl_s: float, name: str, arg: Any, count: int
) -> list[Any]:
    """Queue ``count`` commands while the reactor is inside a ``crawl_s`` handler."""
    crawl = asyncio.ensure_future(node.apply_async("crawl", crawl_s, timeout=30))
    await asyncio.sleep(0.1)  # the reactor is inside crawl now: everything below queues
    calls = [node.apply_async(name, arg, timeout=30) for _ in range(count)]
    return await asyncio.gather(crawl, *calls)


def test_a_backlog_is_proposed_one_batch_per_turn(tmp_path: Path) -> None:
    """Commands that pile up while the reactor is busy go out max_batch per turn: a turn
    that took them all (persist, encode, apply) once ran long enough for a loaded
    leader's followers to elect another."""
    with zraft.Node(_solo_config(tmp_path, max_batch=8), Slow()) as node:
        _wait_leader([node])
        results = asyncio.run(_behind_a_crawl(node, 0.5, "add", 1, 200))
        assert results[0] == 0.5 and sorted(results[1:]) == list(range(1, 201))
        batch = node.status()["metrics"]["append_batch"]
    assert batch["max"] <= 8, batch  # 4 x max_batch per turn before the fix
    assert batch["count"] >= 200 // 8


def test_turns_that_run_long_shrink_the_next_turns_batch(tmp_path: Path) -> None:
    """Count alone does not bound a turn (a command's cost depends on the host and the
    handler): a backlog of 2 ms commands with max_batch=64 would run 128 ms turns, so
    with max_turn_ms=20 the budget halves until a turn fits."""
    with zraft.Node(_solo_config(tmp_path, max_batch=64, max_turn_ms=20), Slow()) as node:
        _wait_leader([node])
        results = asyncio.run(_behind_a_crawl(node, 0.3, "crawl", 0.002, 300))
        assert results == [0.3] + [0.002] * 300
        m = node.status()["metrics"]
    budget, batch = m["turn_budget"], m["append_batch"]
    assert budget["shrinks"] >= 3 and budget["size"] <= 16, budget  # 64 -> 32 -> 16 -> 8
    assert batch["count"] >= 15, batch  # 300 / 64 = 5 appends at a fixed max_batch


def test_a_long_inbound_queue_is_stepped_over_several_turns(tmp_path: Path) -> None:
    """After a heal or a SIGCONT the ROUTER holds a queue of messages; stepping up to
    1024 of them in one turn kept heartbeats and persistence waiting for all of them.
    Here each request costs 2 ms to step, so 300 queued ones made a 0.6 s turn."""
    import time

    import zmq

    from zraft import codec
    from zraft.protocol import ClientReply, ClientRequest

    cfg = _solo_config(tmp_path, max_turn_ms=20)
    with zraft.Node(cfg, Counter()) as node:
        _wait_leader([node])
        step = node._on_client_request

        def costly(identity: bytes, req: ClientRequest) -> None:
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:  # a cost model: 2 ms of work, not a wait
                pass
            step(identity, req)

        node._on_client_request = costly  # type: ignore[method-assign]
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cfg.bind)
        try:
            client_id = b"c" * 16
            for seq in range(1, 301):
                req = ClientRequest(seq, "apply", "add", (1,), client_id, seq)
                sock.send(codec.encode(req, cfg.cluster_id))
            replies: list[Any] = []
            while len(replies) < 300 and sock.poll(30_000):
                replies += codec.decode_many(sock.recv(), cfg.cluster_id)
        finally:
            sock.close()
        assert all(isinstance(r, ClientReply) and r.ok for r in replies), replies[:3]
        assert sorted(r.result for r in replies) == list(range(1, 301))
        batch = node.status()["metrics"]["append_batch"]
    # a turn steps one slice of 16 (32 ms of work is past half of max_turn_ms) and stops:
    # each turn's proposals are one append. (Not a bound on turn time: a busy host
    # stretches the 2 ms of work, not the number of requests a turn takes on.)
    assert batch["max"] <= 16 and batch["count"] >= 300 // 16, batch


def test_automatic_snapshots_are_jittered_per_node(tmp_path: Path) -> None:
    """Nodes applying the same log must not all snapshot at the same index (a stall)."""
    every = 200
    gaps: dict[int, list[int]] = {}
    for seed in (1, 2):
        cfg = _solo_config(tmp_path / str(seed), snapshot_entries=every, seed=seed)
        taken: list[int] = []
        with zraft.Node(cfg, Counter()) as node:
            node.on("snapshot_taken", lambda ev, into=taken: into.append(int(ev.value)))
            _wait_leader([node])
            for _ in range(1200):  # one at a time: each apply is its own batch
                node.apply("add", 1, timeout=10)
            node.take_snapshot(timeout=10)  # waits out any automatic one in progress
        auto = taken[:-1]
        assert len(auto) >= 3, taken
        gaps[seed] = [b - a for a, b in zip([0, *auto], auto, strict=False)]
        # "snapshot_entries" plus at most a quarter, give or take the one entry that the
        # bootstrap membership adds and the commands applied while one is being written
        assert all(every <= g <= every + every // 4 + 20 for g in gaps[seed]), gaps[seed]
    assert gaps[1] != gaps[2], "two nodes with different seeds snapshot at different points"


class _HeldFlush:
    """os.fdatasync that holds the flushes of the first leader's helper thread."""

    def __init__(self, real: Any) -> None:
        self.real, self.release, self.held = real, threading.Event(), threading.Event()
        self.thread: int | None = None

    def __call__(self, fd: int) -> None:
        if threading.current_thread().name == "zraft-fsync" and not self.release.is_set():
            if self.thread is None:
                self.thread = threading.get_ident()
            if self.thread == threading.get_ident():
                self.held.set()
                assert self.release.wait(60), "the test never released the flush"
        self.real(fd)


@pytest.fixture
def async_trio(tmp_path: Path) -> Iterator[list[zraft.Node]]:
    yield from _trio(tmp_path, async_leader_flush=True)


def test_a_leader_commits_while_its_own_flush_hangs_and_flushes_before_following(
    async_trio: list[zraft.Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dissertation 10.2.1 (async_leader_flush): two followers' flushes commit without the
    leader's; but once deposed, the old leader finishes its flush before it acknowledges
    any append."""
    trio = async_trio
    import os

    from zraft.core import AppendResponse

    old = _wait_leader(trio)
    assert old.apply("add", 1) == 1
    gate = _HeldFlush(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", gate)
    sent_early: list[object] = []
    real_send = old.transport.send

    def send(msg: Any, *rest: Any) -> None:
        if isinstance(msg, AppendResponse) and not gate.release.is_set():
            sent_early.append(msg)
        real_send(msg, *rest)

    monkeypatch.setattr(old.transport, "send", send)
    try:
        assert old.apply("add", 2, timeout=10) == 3, "committed by the followers' flushes"
        # the helper thread may reach its flush only after the followers' acks arrived (a
        # busy CI machine); either way the flush is held now, not done: the commit was theirs
        assert gate.held.wait(10), "the leader's own flush of that entry is held"
        new = next(n for n in trio if n is not old)
        old.transfer_leadership(new.config.node_id, timeout=10)
        _wait_until(lambda: new.status()["role"] == "leader", "the transfer did not complete")
        assert new.apply("add", 4, timeout=10) == 7, "the third node makes the majority"
        assert not sent_early, "a deposed leader acknowledged appends before its flush"
    finally:
        gate.release.set()
    assert new.apply("add", 0, timeout=10) == 7
    caught_up = lambda: old.status()["applied"] >= new.status()["applied"]  # noqa: E731
    _wait_until(caught_up, "the old leader did not catch up")


def test_by_default_a_leader_flushes_inline(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)
    assert [leader.apply("add", 1) for _ in range(20)][-1] >= 20
    assert not [t for t in threading.enumerate() if t.name == "zraft-fsync"]


class _SlowSnapshots(Counter):
    """Its snapshot stream waits for ``release``: a snapshot stays "being written"."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.writing = threading.Event(), threading.Event()

    def snapshot(self) -> Any:
        value = self.value  # captured on the reactor; written on the helper thread

        def stream() -> Iterator[bytes]:
            self.writing.set()
            assert self.release.wait(30), "the test never released the snapshot"
            yield str(value).encode()

        return stream()


def test_take_snapshot_during_another_waits_and_covers_what_was_applied(
    tmp_path: Path,
) -> None:
    import time

    sm = _SlowSnapshots()
    with _single(tmp_path, sm) as node:
        _wait_leader([node])
        for _ in range(5):
            node.apply("add", 1)
        first: list[int] = []
        t1 = threading.Thread(target=lambda: first.append(node.take_snapshot(timeout=30)))
        t1.start()
        assert sm.writing.wait(30)
        applied = max(node.apply("add", 1) for _ in range(3))
        second: list[int] = []
        t2 = threading.Thread(target=lambda: second.append(node.take_snapshot(timeout=30)))
        t2.start()
        deadline = time.monotonic() + 30
        while len(node._snapshot_waiters) < 2:  # the second call is queued behind the first
            assert time.monotonic() < deadline and t2.is_alive(), "second call not waiting"
            time.sleep(0.01)
        sm.release.set()
        t1.join(30)
        t2.join(30)
        assert first and second, "both calls answered (the second was not refused as busy)"
        assert first[0] < second[0], "the second took a new snapshot: the first missed some"
        assert second[0] >= first[0] + 3 and applied == 8


def test_a_snapshot_write_outliving_stop_tells_its_caller_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zraft.node

    monkeypatch.setattr(zraft.node, "SNAPSHOT_STOP_WAIT_S", 0.2)
    sm = _SlowSnapshots()
    node = _single(tmp_path, sm).start()
    try:
        _wait_leader([node])
        node.apply("add", 1)
        errors: list[Exception] = []

        def call() -> None:
            try:
                node.take_snapshot(timeout=60)
            except Exception as e:  # the test inspects it
                errors.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        assert sm.writing.wait(30)
        node.stop()
        caller.join(10)
        assert not caller.is_alive(), "the caller of a snapshot cut off by stop() hung"
        assert errors and "stopped" in str(errors[0]).lower(), errors
    finally:
        sm.release.set()
        node.stop()


def test_a_pending_promotion_survives_a_leader_change(
    trio: list[zraft.Node], tmp_path: Path
) -> None:
    """add_member(voter=True) marks the learner for promotion in the configuration: a
    leader elected before the learner caught up still promotes it. (A ``--join`` node
    also keeps asking; here n4 only learns its peers, so the mark alone must do it.)"""

    old = _wait_leader(trio)
    assert old.apply("add", 1) == 1
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    old.add_member("n4", addr, timeout=10)  # n4 is not running: it cannot catch up yet
    assert old.status()["promoting"] == ["n4"]
    new = next(n for n in trio if n is not old)
    old.transfer_leadership(new.config.node_id, timeout=10)
    _wait_until(lambda: new.status()["role"] == "leader", "the transfer did not complete")
    assert new.status()["promoting"] == ["n4"], "the mark is in the configuration"
    peers = {n.config.node_id: n.config.address for n in trio}
    cfg = zraft.Config(node_id="n4", bind=addr, data_dir=str(tmp_path / "n4"), join=addr)
    n4 = zraft.Node(cfg, Counter())
    n4._start_join_thread = lambda endpoint: n4._post(  # type: ignore[method-assign]
        lambda: n4._learn_join_peers(peers)
    )
    with n4:
        _wait_until(lambda: "n4" in new.status()["voters"], "n4 never promoted", 30)
        assert new.status()["promoting"] == []
        assert new.apply("add", 1) == 2
        _wait_until(
            lambda: n4.status()["applied"] >= new.status()["applied"], "n4 did not catch up"
        )


def test_promotion_marks_follow_add_and_remove(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)
    assert leader.apply("add", 1) == 1  # this term's no-op is committed: changes may start
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    leader.add_member("n5", addr, voter=False, timeout=10)
    assert (leader.status()["learners"], leader.status()["promoting"]) == (["n5"], [])
    leader.add_member("n5", addr, voter=False, timeout=10)  # idempotent
    leader.add_member("n5", addr, voter=True, timeout=10)  # a learner asks to vote
    assert leader.status()["promoting"] == ["n5"]
    leader.add_member("n5", addr, voter=True, timeout=10)  # idempotent too
    with pytest.raises(zraft.CommandFailed, match="already belongs to member n5"):
        leader.add_member("n6", addr, timeout=10)  # one address, two ids: refused
    leader.remove_member("n5", timeout=10)
    assert (leader.status()["learners"], leader.status()["promoting"]) == ([], [])


def test_session_limits_are_the_leaders_on_every_node(tmp_path: Path) -> None:
    """Nodes configured with different session limits still trim their session tables
    alike: each leader's no-op carries its limits, a snapshot the ones in force. (Before,
    each node kept its own max_sessions clients, and exactly-once answers diverged.)"""
    limits = {"n1": (4, 3), "n2": (8, 5), "n3": (16, 7)}
    per_node = {
        nid: {"session_window": w, "max_sessions": m, "snapshot_entries": 0}
        for nid, (w, m) in limits.items()
    }
    cluster = _trio(tmp_path, per_node=per_node)
    nodes = next(cluster)
    endpoints = [n.config.address for n in nodes]

    def all_have(clients: int, leader: zraft.Node) -> bool:
        w, m = limits[leader.config.node_id]
        want = {"clients": clients, "session_window": w, "max_sessions": m}
        return all(n.status()["sessions"] == want for n in nodes)

    try:
        leader = _wait_leader(nodes)
        for _ in range(10):  # more clients than any node's max_sessions
            with zraft.Client(endpoints) as c:
                c.apply("add", 1)
        clients = limits[leader.config.node_id][1]
        _wait_until(lambda: all_have(clients, leader), "nodes disagree on the sessions")

        new = next(n for n in nodes if n is not leader)
        leader.transfer_leadership(new.config.node_id, timeout=10)
        _wait_until(lambda: new.status()["role"] == "leader", "the transfer did not complete")
        with zraft.Client(endpoints) as c:
            c.apply("add", 1)
        clients = min(clients + 1, limits[new.config.node_id][1])
        _wait_until(lambda: all_have(clients, new), "the new leader's limits were not adopted")

        # a follower restored from its snapshot, configured otherwise, still agrees
        i, follower = next((i, n) for i, n in enumerate(nodes) if n is not new)
        follower.take_snapshot(timeout=10)
        follower.stop()
        cfg = follower.config
        nodes[i] = zraft.Node(
            zraft.Config(
                node_id=cfg.node_id,
                bind=cfg.bind,
                peers=cfg.peers,
                data_dir=cfg.data_dir,
                session_window=99,
                max_sessions=99,
            ),
            Counter(),
        )
        nodes[i].start()
        assert nodes[i].status()["sessions"]["max_sessions"] == limits[new.config.node_id][1]
        _wait_until(lambda: all_have(clients, new), "the restored follower disagrees")
    finally:
        cluster.close()
        for n in nodes:
            n.stop()


def test_status_reports_fsync_turn_and_batch_histograms(trio: list[zraft.Node]) -> None:
    leader = _wait_leader(trio)
    for _ in range(20):
        leader.apply("add", 1)
    m = leader.status()["metrics"]
    fsync, turn, batch = m["log_fsync"], m["turn"], m["append_batch"]
    assert fsync["count"] >= 20, "one flush per append at least (a command at a time)"
    assert 0 <= fsync["p50_ms"] <= fsync["p99_ms"] <= fsync["max_ms"]
    assert turn["count"] >= 20 and turn["max_ms"] > 0
    # one fsync per append on the leader while it flushes inline (async_leader_flush off)
    assert batch["count"] == fsync["count"] and batch["max"] >= 1
    assert sum(c for _, c in batch["buckets"]) == batch["count"]


def test_status_times_client_commands_from_request_to_reply(trio: list[zraft.Node]) -> None:
    """``metrics["command"]``: the leader's share of a client's latency. Each command a
    client sends is counted once, and none takes longer here than the client waited."""
    leader = _wait_leader(trio)
    leader.apply("add", 1)  # in-process: no request off the socket, not counted
    assert leader.status()["metrics"]["command"]["count"] == 0
    longest_s = 0.0
    with zraft.Client([leader.config.address], timeout=60, attempt_timeout=30) as c:
        for _ in range(10):  # (no resend on a slow host: each is sent once)
            started = time.monotonic()
            c.apply("add", 1)
            longest_s = max(longest_s, time.monotonic() - started)
    command = leader.status()["metrics"]["command"]
    assert command["count"] == 10
    assert 0 < command["p50_ms"] <= command["max_ms"] <= longest_s * 1000


class Store(zraft.StateMachine):
    """Keeps every value it is given, as the handler saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Any] = {}

    @zraft.command
    def put(self, key: str, value: Any) -> int:
        self.values[key] = value
        return len(self.values)

    @zraft.query
    def dump(self) -> dict[str, Any]:
        return self.values


def test_a_leader_applies_a_clients_command_as_decoded_off_the_wire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader skips decoding the entries it proposed for clients (it holds the
    request's decoded command); followers decode them; every node applies equal values."""
    decoded_by: list[str] = []
    real = zraft.codec.decode_command

    def counting(data: bytes, **kw: Any) -> Any:
        decoded_by.append(threading.current_thread().name)
        return real(data, **kw)

    monkeypatch.setattr(zraft.codec, "decode_command", counting)
    ports = free_ports(3)
    peers = {f"n{i}": f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    nodes = [
        zraft.Node(zraft.Config(nid, addr, str(tmp_path / nid), peers=peers), Store())
        for nid, addr in peers.items()
    ]
    for n in nodes:
        n.start()
    try:
        leader = _wait_leader(nodes)
        values: list[Any] = [
            {"a": [1, 2.5, None], "b": {"c": b"\x00\xff"}},
            ["x", True, -(2**40)],
            "\u00e9t\u00e9",
            b"raw",
        ]
        with zraft.Client([n.config.address for n in nodes]) as c:
            for i, v in enumerate(values):
                assert c.apply("put", f"k{i}", v) == i + 1
        leader.apply("put", "embedded", [1, 2])  # an in-process call: the entry is decoded
        _wait_until(
            lambda: all(len(n.query("dump", consistency="local")) == 5 for n in nodes),
            "followers did not apply everything",
        )
        dumps = [n.query("dump", consistency="local") for n in nodes]
        assert dumps[0] == dumps[1] == dumps[2]
        assert [dumps[0][f"k{i}"] for i in range(4)] == values
        me = f"zraft-{leader.config.node_id}"
        assert decoded_by.count(me) == 1, "only the in-process command is decoded on the leader"
        for n in nodes:
            if n is not leader:
                assert decoded_by.count(f"zraft-{n.config.node_id}") == 5
    finally:
        for n in nodes:
            n.stop()


def test_a_command_too_big_for_a_frame_is_refused_and_writes_go_on(tmp_path: Path) -> None:
    """An entry no AppendEntries frame can carry would be dropped on every send, and
    every later entry would wait behind it forever: it is refused up front."""
    import time

    small = {"max_msg_bytes": 1 << 14, "snapshot_chunk_bytes": 1 << 14}
    for nodes in _trio(tmp_path, max_frame_bytes=1 << 16, **small):
        leader = _wait_leader(nodes)
        with pytest.raises(zraft.CommandFailed, match="max_frame_bytes=65536"):
            leader.apply("add", b"x" * (1 << 16), timeout=10)
        assert leader.apply("add", 5, timeout=10) == 5
        deadline = time.monotonic() + 20
        while any(n.query("read", consistency="local") != 5 for n in nodes):
            assert time.monotonic() < deadline, "a follower did not apply the small write"
            time.sleep(0.05)  # process-level polling with a generous bound


def test_a_command_too_big_for_a_log_record_is_refused_and_the_node_goes_on(
    tmp_path: Path,
) -> None:
    """The default frame (64 MiB) takes more than a log record (16 MiB) holds: such a
    command once reached storage, whose refusal stopped the reactor on every node."""
    with _single(tmp_path, Counter()) as node:
        _wait_leader([node])
        with pytest.raises(zraft.CommandFailed, match="log record"):
            node.apply("add", b"x" * (16 << 20), timeout=30)
        assert node.apply("add", 5, timeout=10) == 5
        assert node.status()["role"] == "leader"


def test_a_frame_limit_too_small_for_any_command_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(zraft.ConfigError, match="max_frame_bytes must be >= 65536"):
        _solo_config(tmp_path, max_frame_bytes=4096).validate()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"max_frame_bytes": 1 << 16}, "max_msg_bytes must be <= max_frame_bytes / 2"),
        (
            {"max_frame_bytes": 1 << 16, "max_msg_bytes": 1 << 14},
            "snapshot_chunk_bytes must be <= max_frame_bytes / 2",
        ),
        ({"tick_ms": 100_000_000_000}, "tick_ms must be <= 60000"),
        ({"segment_bytes": 10}, "segment_bytes must be in"),
        ({"keep_snapshots": 5000}, "keep_snapshots must be <= 1000"),
    ],
)
def test_options_that_would_fail_later_are_config_errors(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    """Each once passed validation, then stalled a follower for good (a message bigger
    than a frame is dropped on every send), crashed the reactor, or failed at open."""
    with pytest.raises(zraft.ConfigError, match=says.replace("(", r"\(")):
        _solo_config(tmp_path, **options).validate()


def test_join_endpoints_are_checked_but_spaces_and_empty_items_are_fine(tmp_path: Path) -> None:
    ok = "tcp://127.0.0.1:7001, tcp://127.0.0.1:7002,"
    zraft.Config(node_id="n4", bind="tcp://127.0.0.1:7004", data_dir="d", join=ok).validate()
    with pytest.raises(zraft.ConfigError, match="join 'garbage'"):
        zraft.Config(
            node_id="n4", bind="tcp://127.0.0.1:7004", data_dir="d", join="garbage"
        ).validate()


def test_an_address_of_another_peer_is_a_config_error(tmp_path: Path) -> None:
    peers = {"n1": "tcp://127.0.0.1:7001", "n2": "tcp://127.0.0.1:7002"}
    cfg = zraft.Config(
        node_id="n1", bind=peers["n1"], advertise=peers["n2"], peers=peers, data_dir="d"
    )
    with pytest.raises(zraft.ConfigError, match="is peer n2's"):
        cfg.validate()


def test_a_retried_membership_change_is_not_acknowledged_before_it_commits(
    tmp_path: Path,
) -> None:
    """A retry finds the change already in the leader's configuration; while that entry
    is uncommitted (both followers down) it must not answer success: a new leader might
    never see the change. Once a follower is back, the change commits and both answer."""
    for nodes in _trio(tmp_path, check_quorum=False):  # the lone leader stays leader
        leader = _wait_leader(nodes)
        followers = [n for n in nodes if n is not leader]
        for f in followers:
            f.stop()
        addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
        with zraft.Client([leader.config.bind], timeout=4, attempt_timeout=1) as client:
            with pytest.raises(zraft.UnknownOutcome):
                client.add_member("n4", addr, voter=False)  # its retries see the change
            with zraft.Node(followers[0].config, Counter()):  # a quorum again: it commits
                index = client.add_member("n4", addr, voter=False, timeout=20)
                assert index is not None and index <= leader.status()["commit"]
                assert "n4" in leader.status()["learners"]
            with pytest.raises(zraft.UnknownOutcome):
                client.remove_member("n4")  # the same for a removal
            with zraft.Node(followers[0].config, Counter()):
                client.remove_member("n4", timeout=20)
                assert "n4" not in leader.status()["learners"]


class Stuck(zraft.StateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    @zraft.command
    def hang(self) -> None:
        self.release.wait(30)  # holds the reactor, as a stuck disk or handler would

    @zraft.query
    def ping(self) -> str:
        return "pong"


def test_async_calls_give_up_on_a_stuck_reactor_by_their_timeout(tmp_path: Path) -> None:
    sm = Stuck()
    node = zraft.Node(_solo_config(tmp_path / "solo"), sm)

    async def main() -> None:
        stuck = asyncio.ensure_future(node.apply_async("hang", timeout=30))
        await asyncio.sleep(0.2)  # let the reactor pick it up (not a sync point we assert on)
        started = time.monotonic()
        with pytest.raises(zraft.UnknownOutcome):
            await node.apply_async("hang", timeout=0.5)
        with pytest.raises(zraft.ReadTimeout):
            await node.query_async("ping", timeout=0.5)
        assert time.monotonic() - started < 10, "each gave up after its timeout + 1 s"
        sm.release.set()
        await stuck
        # the reactor answers the calls that gave up, and must survive doing so
        assert await node.query_async("ping", timeout=10) == "pong"

    with node:
        _wait_leader([node])
        asyncio.run(main())
        assert node.status()["role"] == "leader"


def test_the_loop_watchdog_gives_up_only_calls_left_unanswered() -> None:
    """One sweep per tick stands in for a timer per call: it must answer the calls that
    are due and unanswered, never before their time and at most a tick after, leave the
    rest, drop what was answered, and stop once nothing waits."""
    from zraft.node import _WATCH_TICK_S, Outcome, _LoopInbox

    loop = asyncio.new_event_loop()
    try:
        clock = [loop.time()]
        sweeps: list[float] = []
        loop.time = lambda: clock[0]  # type: ignore[method-assign]
        loop.call_at = lambda when, _cb: sweeps.append(when)  # type: ignore[assignment,method-assign,return-value]
        inbox = _LoopInbox(loop)
        answered, due, later, forever = (loop.create_future() for _ in range(4))
        tick = inbox.watch(answered, 1.0, "unknown_outcome")
        assert inbox.watch(due, 1.0, "timeout") == tick
        inbox.watch(later, 60.0, "timeout")
        assert inbox.watch(forever, math.inf, "timeout") == 0  # waits as long as asked
        answered.set_result(Outcome(True, 7))
        inbox.unwatch(tick, answered)  # what apply_async does once its answer came
        assert all(answered not in bucket for bucket in inbox.watched.values())
        assert len(sweeps) == 1 and sweeps[0] > clock[0], "one sweep, at the next tick's end"
        assert sweeps[0] / _WATCH_TICK_S == round(sweeps[0] / _WATCH_TICK_S)
        start = clock[0]
        clock[0] = start + 1.0 - 1e-6
        inbox._sweep()
        assert not due.done(), "gave up before its time"
        clock[0] = start + 1.0 + _WATCH_TICK_S
        inbox._sweep()
        assert due.result().error == "timeout"
        assert answered.result().result == 7 and not later.done()
        assert inbox.sweeping and sweeps[-1] > clock[0], "a call still waits: sweep again"
        clock[0] = start + 60.0 + _WATCH_TICK_S
        inbox._sweep()
        assert later.result().error == "timeout" and not forever.done()
        assert not inbox.watched and not inbox.sweeping
        tick = inbox.watch(answered, 5.0, "timeout")
        inbox.unwatch(tick, answered)
        assert not inbox.watched, "an emptied bucket goes at once"
    finally:
        loop.close()


def test_a_start_that_times_out_leaves_no_node_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() gave up on a slow open (a big snapshot to restore, say) and raised, while
    the reactor went on to bind its port and serve."""
    from zraft import node as node_module

    real_open = node_module.Storage.open

    def slow_open(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # the slow open itself, not a synchronisation
        return real_open(*args, **kwargs)

    monkeypatch.setattr(node_module.Storage, "open", slow_open)
    node = zraft.Node(_solo_config(tmp_path / "solo"), Counter())
    with pytest.raises(zraft.NodeStopped):
        node.start(timeout=0.2)
    assert node._thread is not None
    node._thread.join(10)
    assert not node._thread.is_alive(), "the reactor stopped once its open finished"


def test_a_waiter_for_an_overwritten_entry_is_not_answered_by_the_config_there() -> None:
    """A retried membership change waits beside whoever waits at the configuration's
    index; a waiter left from an older term waited for another entry, overwritten by a
    later leader: it is told so, never handed the configuration's success (found in
    review of the first version, which reported a lost write as applied)."""
    from types import SimpleNamespace

    from zraft.node import Node, Outcome, _Pending

    answers: dict[str, Outcome] = {}
    stale = _Pending(1, lambda out: answers.__setitem__("stale", out), time.monotonic() + 60)
    node: Any = SimpleNamespace(
        core=SimpleNamespace(config_index=4, log=SimpleNamespace(term=lambda i: 2)),
        _applied=3,
        _pending={4: stale},
        _deadline=lambda timeout: time.monotonic() + 60,
    )
    Node._answer_when_config_applied(node, lambda out: answers.__setitem__("retry", out))
    assert answers["stale"].error == "not_leader"
    waiter = node._pending[4]
    assert waiter.term == 2
    waiter.deliver(Outcome(True, 4))  # the configuration entry applies
    assert answers["retry"].ok and answers["retry"].result == 4
    assert answers["stale"].error == "not_leader", "answered once, with the truth"


def test_a_log_whose_hard_state_file_is_gone_is_refused(tmp_path: Path) -> None:
    """Without it the node would start at term 0 with no vote, and could vote a second
    time in a term it had voted in (found in a storage review)."""
    from zraft.storage.errors import CorruptHardState

    with _single(tmp_path, Counter()) as node:
        _wait_leader([node])
        node.apply("add", 1, timeout=10)
    (tmp_path / "solo" / "hardstate").unlink()
    with pytest.raises(CorruptHardState, match="term and vote it held are lost"):
        _single(tmp_path, Counter()).start()
    report = zraft.storage.repair(tmp_path / "solo", reset_hard_state=True)  # past every term
    assert "missing" in report.hard_state_error and report.hard_state_reset
    with _single(tmp_path, Counter()) as again:
        _wait_leader([again])
        assert again.query("read") == 1


class Recorder(zraft.StateMachine):
    """Records each command's arguments as the handler got them: type and repr."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[tuple[str, str]]] = []

    @zraft.command
    def record(self, *args: Any) -> int:
        self.seen.append([(type(a).__name__, repr(a)) for a in args])
        return len(self.seen)


class _Small(enum.IntEnum):
    ONE = 1


def test_every_replica_applies_an_embedded_call_with_the_same_values_and_types(
    tmp_path: Path,
) -> None:
    """The leader applies an embedded call with flat arguments as given, not decoded
    from its entry; followers decode it. Edge values, containers and subclasses (which
    the leader must decode too) must reach every replica's handler alike."""
    ports = free_ports(3)
    peers = {f"n{i}": f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    sms = {nid: Recorder() for nid in peers}
    nodes = [
        zraft.Node(zraft.Config(nid, addr, str(tmp_path / nid), peers=peers), sms[nid])
        for nid, addr in peers.items()
    ]
    calls: list[tuple[Any, ...]] = [
        (None, True, False, 0, -1, -(2**63), 2**64 - 1),
        (0.5, -0.0, math.inf, -math.inf, math.nan, 5e-324),
        ("", "naïve ☃ \U0010ffff", b"", b"\x00\xff"),
        ([1, "x"], {"k": b"v"}, (1, 2)),
        (bytearray(b"ba"),),
        (_Small.ONE,),
        (),
    ]
    for n in nodes:
        n.start()
    try:
        leader = _wait_leader(nodes)
        for args in calls:
            leader.apply("record", *args, timeout=20)

        async def many() -> list[Any]:
            return list(await asyncio.gather(*(leader.apply_async("record", *a) for a in calls)))

        asyncio.run(many())
        _wait_until(
            lambda: all(len(sm.seen) == 2 * len(calls) for sm in sms.values()),
            "every replica applied every call",
        )
    finally:
        for n in nodes:
            n.stop()
    leader_seen = sms[leader.config.node_id].seen
    assert all(sm.seen == leader_seen for sm in sms.values())
    assert leader_seen[4] == [("bytes", "b'ba'")] and leader_seen[5] == [("int", "1")]
    assert leader_seen[3][2] == ("list", "[1, 2]")
    assert leader_seen[1][4] == ("float", "nan") and leader_seen[1][1] == ("float", "-0.0")
