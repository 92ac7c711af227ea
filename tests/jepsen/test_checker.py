"""The linearizability checker: known-bad histories rejected, known-good accepted, an oracle.

Times are plain integers (ns) chosen by hand: the checker only compares them.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from zraft.testing.history import HistoryRecorder, Op, read_jsonl, time_unit, write_jsonl
from zraft.testing.linearizability import CheckResult, check


class Builder:
    """Writes histories tersely: ``b.put("x", 1, 0, 10)`` is put x=1 over [0, 10]."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(
        self,
        kind: str,
        key: str,
        value: Any,
        start: int,
        end: int | None,
        *,
        ok: bool | None = True,
        result: Any = None,
        client: int = 0,
    ) -> Op:
        op = Op(
            id=len(self.ops),
            client=client,
            kind=kind,
            key=key,
            value=value,
            invoke_ns=start,
            complete_ns=end,
            ok=ok,
            result=result,
        )
        self.ops.append(op)
        return op

    def put(self, key: str, value: Any, start: int, end: int | None, **kw: Any) -> Op:
        return self.add("put", key, value, start, end, **kw)

    def get(self, key: str, result: Any, start: int, end: int, **kw: Any) -> Op:
        return self.add("get", key, None, start, end, result=result, **kw)

    def delete(self, key: str, start: int, end: int | None, **kw: Any) -> Op:
        return self.add("delete", key, None, start, end, **kw)

    def cas(
        self,
        key: str,
        expected: Any,
        new: Any,
        swapped: bool | None,
        start: int,
        end: int | None,
        client: int = 0,
    ) -> Op:
        ok = None if swapped is None else True
        value = (expected, new)
        return self.add("cas", key, value, start, end, ok=ok, result=swapped, client=client)

    def unknown_put(self, key: str, value: Any, start: int) -> Op:
        return self.add("put", key, value, start, None, ok=None)

    def check(self) -> CheckResult:
        return check(self.ops, timeout_s=30)


# ---------------------------------------------------------------- known-bad histories


def test_stale_read_is_rejected() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.put("x", 2, 20, 30)
    stale = b.get("x", 1, 40, 50)
    res = b.check()
    assert res.ok is False
    failure = res.keys["x"].failure
    assert failure is not None
    assert failure.blocked == stale
    assert [op.id for op in failure.prefix] == [0, 1]
    assert failure.state == 2


def test_lost_write_is_rejected() -> None:
    """An acknowledged put is never seen; later reads still see the older value."""
    b = Builder()
    b.put("x", "old", 0, 10)
    b.put("x", "new", 15, 30, client=1)
    b.get("x", "old", 12, 20, client=2)  # concurrent with the put: fine on its own
    b.get("x", "old", 40, 50, client=2)  # after the put completed: the write was lost
    b.get("x", "old", 60, 70, client=3)
    assert b.check().ok is False


def test_double_applied_cas_is_rejected() -> None:
    b = Builder()
    b.put("c", 0, 0, 10)
    b.cas("c", 0, 1, True, 20, 40)
    b.cas("c", 0, 1, True, 25, 45)  # concurrent, but only one can see 0
    assert b.check().ok is False


def test_double_applied_cas_with_intervening_write_is_accepted() -> None:
    """The control for the test above: a write of 0 in between makes both swaps possible."""
    b = Builder()
    b.put("c", 0, 0, 10)
    b.cas("c", 0, 1, True, 20, 40)
    b.put("c", 0, 22, 42, client=2)
    b.cas("c", 0, 1, True, 25, 45, client=1)
    assert b.check().ok is True


def test_read_of_never_written_value_is_rejected() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.put("x", 2, 5, 15, client=1)
    b.get("x", 3, 0, 20, client=2)
    assert b.check().ok is False


def test_read_of_absent_key_before_any_write_is_accepted() -> None:
    b = Builder()
    b.get("x", None, 0, 5)
    b.put("x", 1, 10, 20)
    b.get("x", 1, 30, 40)
    assert b.check().ok is True


def test_delete_not_taking_effect_is_rejected() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.delete("x", 20, 30)
    b.get("x", 1, 40, 50)
    assert b.check().ok is False
    b2 = Builder()
    b2.put("x", 1, 0, 10)
    b2.delete("x", 20, 30)
    b2.get("x", None, 40, 50)
    assert b2.check().ok is True


def test_failed_cas_is_checked_as_a_read() -> None:
    b = Builder()
    b.put("x", 5, 0, 10)
    b.cas("x", 5, 6, False, 20, 30)  # the register holds 5: the swap must succeed
    assert b.check().ok is False


def test_reads_cannot_go_back_in_time() -> None:
    """Two sequential reads on concurrent writes: once 2 was seen, 1 cannot come back."""
    b = Builder()
    b.put("x", 1, 0, 100)
    b.put("x", 2, 0, 100, client=1)
    b.get("x", 2, 10, 20, client=2)
    b.get("x", 1, 30, 40, client=2)
    b.get("x", 2, 50, 60, client=2)
    assert b.check().ok is False


# ---------------------------------------------------------------- known-good histories


@pytest.mark.parametrize("seen", [1, 2])
def test_overlapping_writes_either_order(seen: int) -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.put("x", 2, 5, 15, client=1)
    b.get("x", seen, 20, 25, client=2)
    b.get("x", seen, 30, 35, client=3)
    assert b.check().ok is True


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_write_sees_either(seen: int | None) -> None:
    b = Builder()
    b.put("x", 1, 10, 30)
    b.get("x", seen, 0, 40, client=1)
    assert b.check().ok is True


@pytest.mark.parametrize("reads", [[2], [1], [1, 2], [2, 2]])
def test_unknown_write_may_or_may_not_take_effect(reads: list[int]) -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.unknown_put("x", 2, 20)
    for n, value in enumerate(reads):
        b.get("x", value, 100 + 10 * n, 105 + 10 * n, client=1)
    assert b.check().ok is True


def test_unknown_write_takes_effect_at_most_once() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.unknown_put("x", 2, 20)
    b.get("x", 2, 30, 40, client=1)
    b.get("x", 1, 50, 60, client=1)
    b.get("x", 2, 70, 80, client=1)  # would need put(2) to apply twice
    assert b.check().ok is False


def test_unknown_write_cannot_act_before_its_invocation() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.get("x", 2, 20, 30)
    b.unknown_put("x", 2, 40)
    assert b.check().ok is False


def test_unknown_cas_and_delete() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.cas("x", 1, 7, None, 20, None)  # unknown cas: applied late
    b.get("x", 1, 30, 40, client=1)
    b.get("x", 7, 50, 60, client=1)
    b.add("delete", "x", None, 55, None, ok=None, client=2)
    b.get("x", None, 70, 80, client=1)
    assert b.check().ok is True


def test_definitely_failed_ops_are_ignored() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    b.put("x", 2, 20, 30, ok=False)
    b.get("x", 1, 40, 50)
    assert b.check().ok is True
    b.get("x", 2, 60, 70)  # the failed put had no effect: 2 can never be read
    assert b.check().ok is False


def test_many_keys_checked_independently() -> None:
    b = Builder()
    for k in range(50):
        key = f"k{k}"
        b.put(key, k, 10 * k, 10 * k + 5)
        b.get(key, k, 10 * k + 6, 10 * k + 9, client=1)
    good = b.check()
    assert good.ok is True
    assert len(good.keys) == 50
    b.get("k17", 16, 1000, 1010)
    bad = b.check()
    assert bad.ok is False
    assert [f.key for f in bad.failures] == ["k17"]
    assert all(r.ok for k, r in bad.keys.items() if k != "k17")


def test_values_equal_after_json_compare_equal(tmp_path: Path) -> None:
    b = Builder()
    b.put("x", [1, {"a": 2}], 0, 10)
    b.get("x", [1, {"a": 2}], 20, 30)
    b.cas("x", [1, {"a": 2}], [3], True, 40, 50)
    b.get("x", [3], 60, 70)
    assert b.check().ok is True
    path = tmp_path / "h.jsonl"
    write_jsonl(b.ops, path)
    assert check(read_jsonl(path)).ok is True


def test_empty_history_is_linearizable() -> None:
    assert check([]).ok is True


# ---------------------------------------------------------------- explanations and limits


def test_explanation_names_key_and_offending_op() -> None:
    b = Builder()
    b.put("acct-7", 100, 0, 10)
    b.put("acct-7", 250, 20, 30, client=1)
    b.get("acct-7", 100, 40, 50, client=2)
    text = b.check().explain()
    assert "acct-7" in text
    assert "#2 c2 get('acct-7') -> 100" in text
    assert "read 100 but the register holds 250" in text
    assert text.startswith("NOT linearizable")


def test_explanation_of_good_history() -> None:
    b = Builder()
    b.put("x", 1, 0, 10)
    assert b.check().explain() == "linearizable: 1 ops over 1 keys"


def test_timeout_gives_undecided() -> None:
    b = Builder()
    for n in range(10):
        b.put("x", n, 10 * n, 10 * n + 5)
    res = check(b.ops, timeout_s=0.0)
    assert res.ok is None
    assert res.keys["x"].note == "timed out"
    assert "undecided" in res.explain()


def test_memory_limit_gives_undecided() -> None:
    b = Builder()
    for n in range(10):
        b.put("x", n, 0, 100, client=n)
    b.get("x", 3, 200, 210)
    assert check(b.ops).ok is True
    res = check(b.ops, max_memory_bytes=1)
    assert res.ok is None
    assert res.keys["x"].note == "memory limit"


# ---------------------------------------------------------------- randomized oracle


def simulate(
    rng: random.Random, n_ops: int, n_clients: int, n_keys: int, unknown_rate: float = 0.1
) -> list[Op]:
    """Ops of a real linearizable register: each takes effect at a random instant of its
    interval; some outcomes are unknown (and took effect, later, or never)."""
    plans: list[dict[str, Any]] = []
    clock = [0] * n_clients
    for n in range(n_ops):
        c = rng.randrange(n_clients)
        start = clock[c] + rng.randrange(0, 30)
        end = start + rng.randrange(1, 60)
        clock[c] = end
        key = f"k{rng.randrange(n_keys)}"
        kind = rng.choice(["put", "put", "get", "get", "get", "delete", "cas"])
        counter = n + 1  # unique written values
        value: Any = counter
        if kind == "cas":
            value = (rng.choice([None, counter - 1, counter - 2, counter - 3]), counter)
        elif kind in ("get", "delete"):
            value = None
        unknown = kind != "get" and rng.random() < unknown_rate
        point: float | None = start + rng.random() * (end - start)
        if unknown:
            point = None if rng.random() < 0.5 else start + rng.random() * 500
        plans.append(dict(id=n, client=c, kind=kind, key=key, value=value, start=start, end=end,
                          unknown=unknown, point=point))  # fmt: skip
    register: dict[str, Any] = {}
    results: dict[int, Any] = {}
    for plan in sorted((p for p in plans if p["point"] is not None), key=lambda p: p["point"]):
        key, kind, value = plan["key"], plan["kind"], plan["value"]
        if kind == "put":
            register[key] = value
        elif kind == "delete":
            register.pop(key, None)
        elif kind == "get":
            results[plan["id"]] = register.get(key)
        else:
            swapped = register.get(key) == value[0]
            if swapped:
                register[key] = value[1]
            results[plan["id"]] = swapped
    return [
        Op(
            id=p["id"],
            client=p["client"],
            kind=p["kind"],
            key=p["key"],
            value=p["value"],
            invoke_ns=p["start"],
            complete_ns=None if p["unknown"] else p["end"],
            ok=None if p["unknown"] else True,
            result=None if p["unknown"] else results.get(p["id"]),
        )
        for p in plans
    ]


def with_result(history: list[Op], victim: Op, result: Any) -> list[Op]:
    return [replace(op, result=result) if op.id == victim.id else op for op in history]


def stale_read_mutant(history: list[Op], rng: random.Random) -> tuple[list[Op], Op] | None:
    """Make a read return the value of a put that a later write provably overwrote.

    Written values are unique, so the put is the only writer of its value; the
    overwrite started after the put ended and ended before the read started, so
    in every linearization put < overwrite < read: the read cannot see the put.
    """
    writes = [op for op in history if op.ok and (op.kind in ("put", "delete") or op.result is True)]
    reads = [op for op in history if op.kind == "get" and op.ok]
    rng.shuffle(reads)
    for read in reads:
        assert read.complete_ns is not None
        for old in (w for w in writes if w.kind == "put" and w.key == read.key):
            assert old.complete_ns is not None
            if old.value != read.result and any(
                w.key == read.key
                and old.complete_ns < w.invoke_ns
                and w.complete_ns is not None
                and w.complete_ns < read.invoke_ns
                for w in writes
            ):
                return with_result(history, read, old.value), read
    return None


@pytest.mark.parametrize("seed", range(1000, 1025))
def test_oracle_linearizable_histories_accepted_and_mutants_rejected(seed: int) -> None:
    rng = random.Random(seed)
    history = simulate(rng, n_ops=300, n_clients=rng.randrange(2, 8), n_keys=rng.randrange(1, 4))
    res = check(history, timeout_s=20)
    assert res.ok is True, f"seed {seed}: {res.explain()}"

    reads = [op for op in history if op.kind == "get" and op.ok]
    victim = rng.choice(reads)
    impossible = f"never-written-{seed}"  # no op ever writes a string: provably unreadable
    bad = check(with_result(history, victim, impossible), timeout_s=20)
    assert bad.ok is False, f"seed {seed}: mutant of op {victim.id} accepted"
    assert [f.key for f in bad.failures] == [victim.key]
    assert bad.failures[0].blocked.id == victim.id
    assert f"#{victim.id} " in bad.explain()

    stale = stale_read_mutant(history, rng)
    assert stale is not None, "the workload always has an overwritten put before some read"
    mutant, read = stale
    bad = check(mutant, timeout_s=20)
    assert bad.ok is False, f"seed {seed}: stale read {read.id} accepted"
    assert bad.failures[0].blocked.id == read.id


@pytest.mark.parametrize("seed", range(40))
def test_engines_agree(seed: int) -> None:
    """WGL and the sweep are independent searches: their verdicts must match, also on
    mutants that may or may not be linearizable (a read changed to another written value)."""
    rng = random.Random(seed)
    history = simulate(
        rng,
        n_ops=150,
        n_clients=rng.randrange(2, 7),
        n_keys=1,
        unknown_rate=rng.choice([0.0, 0.1, 0.3]),
    )
    reads = [op for op in history if op.kind == "get" and op.ok]
    written = [op.value for op in history if op.kind == "put"] + [None]
    candidates = [history] + [
        with_result(history, rng.choice(reads), rng.choice(written)) for _ in range(3)
    ]
    for h in candidates:
        verdicts = {engine: check(h, engine=engine).ok for engine in ("wgl", "sweep")}
        assert verdicts["wgl"] == verdicts["sweep"], f"seed {seed}: {verdicts}"
        assert verdicts["wgl"] is not None
    assert check(history, engine="wgl").ok is True


def tiny_history(rng: random.Random) -> list[Op]:
    """A few ops on one key over a tiny value domain (collisions, cas, deletes, unknown and
    failed outcomes); results from a real register, then maybe one result changed."""
    ops: list[Op] = []
    state: Any = None
    plans = []
    for n in range(rng.randrange(2, 8)):
        start = rng.randrange(0, 20)
        end = start + rng.randrange(1, 10)
        kind = rng.choice(["put", "get", "get", "delete", "cas"])
        value: Any = rng.randrange(3) if kind == "put" else None
        if kind == "cas":
            value = (rng.choice([None, 0, 1, 2]), rng.randrange(3))
        outcome = rng.choices(["ok", "unknown", "failed"], [0.7, 0.2, 0.1])[0]
        took_effect = outcome == "ok" or (outcome == "unknown" and rng.random() < 0.5)
        point = start + rng.random() * (end - start if outcome == "ok" else 30)
        plans.append((point if took_effect else None, n, kind, value, start, end, outcome))
    results: dict[int, Any] = {}
    for at, n, kind, value, *_ in sorted(plans, key=lambda p: p[0] or 0.0):
        if at is None:
            continue
        if kind == "put":
            state = value
        elif kind == "delete":
            state = None
        elif kind == "get":
            results[n] = state
        else:
            results[n] = state == value[0]
            state = value[1] if results[n] else state
    for _, n, kind, value, start, end, outcome in plans:
        ok = {"ok": True, "unknown": None, "failed": False}[outcome]
        result = results.get(n) if ok else None
        if kind == "cas" and ok:
            result = bool(result)
        ops.append(
            Op(id=n, client=n, kind=kind, key="k", value=value, invoke_ns=start,
               complete_ns=None if ok is None else end, ok=ok, result=result)
        )  # fmt: skip
    reads = [op for op in ops if op.ok and op.kind in ("get", "cas")]
    if reads and rng.random() < 0.5:
        victim = rng.choice(reads)
        other = (not victim.result) if victim.kind == "cas" else rng.choice([None, 0, 1, 2])
        ops = with_result(ops, victim, other)
    return ops


def brute_force(history: list[Op]) -> bool:
    """Ground truth by enumeration: some subset of the unknown ops, in some order that
    respects real time, replays on a register. An included unknown cas really ran."""
    ops = [op for op in history if op.ok is not False]
    known = [op for op in ops if op.ok]
    unknown = [op for op in ops if op.unknown and op.kind != "get"]

    def legal(order: tuple[Op, ...]) -> bool:
        for n, later in enumerate(order):
            if later.complete_ns is not None and any(
                later.complete_ns < earlier.invoke_ns for earlier in order[:n]
            ):
                return False
        state: Any = None
        for op in order:
            if op.kind == "put":
                state = op.value
            elif op.kind == "delete":
                state = None
            elif op.kind == "get":
                if op.result != state:
                    return False
            else:
                swapped = state == op.value[0]
                if op.ok and op.result != swapped:
                    return False
                state = op.value[1] if swapped else state
        return True

    return any(
        legal(order)
        for size in range(len(unknown) + 1)
        for subset in itertools.combinations(unknown, size)
        for order in itertools.permutations(known + list(subset))
    )


def test_engines_match_brute_force_on_tiny_histories() -> None:
    rng = random.Random(42)
    verdicts = []
    for _ in range(1500):
        history = tiny_history(rng)
        truth = brute_force(history)
        for engine in ("wgl", "sweep"):
            got = check(history, engine=engine).ok
            assert got is truth, f"{engine} says {got}, truth {truth}: {history}"
        verdicts.append(truth)
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.8  # both verdicts well exercised


def test_oracle_large_history() -> None:
    """~10k ops over a handful of keys with many clients: decided, and linearizable."""
    rng = random.Random(7)
    history = simulate(rng, n_ops=10_000, n_clients=10, n_keys=5)
    res = check(history, timeout_s=60)
    assert res.ok is True, res.explain()


def test_large_failing_history_with_many_unknown_outcomes_is_decided() -> None:
    """The case where depth-first WGL alone explodes: a bad read late in a long history
    with many unknown outcomes. The sweep fallback decides it and points at the read."""
    rng = random.Random(7)
    history = simulate(rng, n_ops=6000, n_clients=10, n_keys=3, unknown_rate=0.1)
    reads = [op for op in history if op.kind == "get" and op.ok]
    victim = reads[int(len(reads) * 0.9)]
    res = check(with_result(history, victim, "never-written"), timeout_s=60)
    assert res.ok is False, res.explain()
    assert res.failures[0].blocked.id == victim.id


# ---------------------------------------------------------------- the recorder


def test_recorder_records_outcomes_and_round_trips(tmp_path: Path) -> None:
    ticks = iter(range(0, 1000, 10))
    rec = HistoryRecorder(clock_ns=lambda: next(ticks))
    a = rec.invoke(0, "put", "x", 1)
    b = rec.invoke(1, "cas", "x", [1, 2])
    c = rec.invoke(2, "get", "x")
    d = rec.invoke(3, "delete", "x")
    rec.complete(a, True)
    rec.complete(b, True, True)
    rec.unknown(c)
    ops = rec.ops()
    assert [op.id for op in ops] == [a, b, c, d]
    assert ops[0].complete_ns == 40 and ops[0].ok is True
    assert ops[1].value == (1, 2) and ops[1].result is True
    assert ops[2].unknown and ops[2].complete_ns is None
    assert ops[3].unknown  # never completed: counts as unknown
    with pytest.raises(ValueError, match="already completed"):
        rec.complete(a, True)
    with pytest.raises(KeyError):
        rec.complete(99, True)

    path = tmp_path / "history.jsonl"
    rec.to_jsonl(path)
    assert len(path.read_text().splitlines()) == 4
    loaded = HistoryRecorder.from_jsonl(path)
    assert loaded.ops() == ops
    assert loaded.invoke(0, "get", "x") == d + 1


def test_jsonl_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="JSON object"):
        read_jsonl(path)
    path.write_text('{"id": "x", "client": 0, "kind": "get", "key": "k", "invoke_ns": 0}\n')
    with pytest.raises(ValueError, match="'id'"):
        read_jsonl(path)
    path.write_text(
        '{"id": 1, "client": 0, "kind": "get", "key": "k", "invoke_ns": 5,'
        ' "complete_ns": 3, "ok": true}\n'
    )
    with pytest.raises(ValueError, match="completed before"):
        read_jsonl(path)


def test_describe_renders_relative_times_in_a_readable_unit() -> None:
    op = Op(id=3, client=1, kind="cas", key="k", value=(None, 2), invoke_ns=5_000_000,
            complete_ns=7_500_000, ok=True, result=True)  # fmt: skip
    assert op.describe(origin_ns=4_000_000, unit=time_unit(10**7)) == (
        "#3 c1 cas('k', None -> 2) -> True [1.000..3.500 ms]"
    )
    assert time_unit(500) == "ns" and time_unit(60 * 10**9) == "s"


def test_recorder_limit_and_validation() -> None:
    rec = HistoryRecorder(max_ops=2)
    rec.invoke(0, "put", "x", 1)
    rec.invoke(0, "get", "x")
    with pytest.raises(OverflowError):
        rec.invoke(0, "get", "x")
    with pytest.raises(ValueError, match="unknown kind"):
        HistoryRecorder().invoke(0, "incr", "x")


def test_recorder_is_thread_safe() -> None:
    rec = HistoryRecorder()
    start = threading.Barrier(4)

    def client(c: int) -> None:
        start.wait()
        for n in range(500):
            op_id = rec.invoke(c, "put", f"k{c}", n)
            rec.complete(op_id, True)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.ops()
    assert sorted(op.id for op in ops) == list(range(2000))
    assert all(op.ok for op in ops)
    assert check(ops).ok is True
