"""The session table alone: exactly-once answers, deterministic trimming, limits as data."""

from __future__ import annotations

import msgpack
import pytest

from zraft.codec import DecodeError
from zraft.config import Config
from zraft.errors import ConfigError
from zraft.sessions import (
    MAX_SESSION_WINDOW,
    MAX_SESSIONS,
    REUSED,
    STALE,
    SessionLimits,
    SessionTable,
)


def _ok(n: int) -> tuple[bool, int, str, str]:
    return (True, n, "", "")


def _run(table: SessionTable, cid: bytes, seq: int) -> object:
    """What the node does: answer from the table, else 'apply' and record."""
    seen = table.begin(cid, seq)
    if seen is None:
        table.record(cid, seq, _ok(seq * 10))
        return "applied"
    return seen


def test_a_retried_sequence_number_gets_the_first_result() -> None:
    t = SessionTable(SessionLimits(window=4, max_sessions=10))
    assert _run(t, b"a", 1) == "applied"
    assert _run(t, b"a", 1) == _ok(10)
    assert _run(t, b"b", 1) == "applied"  # sessions are per client


def test_a_sequence_number_reused_for_another_command_is_not_answered_from_the_table() -> None:
    """Two clients sharing an id (or one that reused its numbers) once got each other's
    results for commands never applied. A retry carries the same bytes: same digest."""
    t = SessionTable(SessionLimits(window=4, max_sessions=10))
    assert t.begin(b"a", 1, digest=111) is None
    t.record(b"a", 1, _ok(10), digest=111)
    assert t.begin(b"a", 1, digest=111) == _ok(10)  # the retry
    assert t.begin(b"a", 1, digest=222) is REUSED  # another command under seq 1
    restored = SessionTable(SessionLimits(window=4, max_sessions=10))
    restored.restore(t.pack())  # digests stay in memory: a restored table trusts the seq
    assert restored.begin(b"a", 1, digest=222) == _ok(10)
    for seq in range(2, 7):  # trimmed with their results
        t.begin(b"a", seq, digest=seq)
        t.record(b"a", seq, _ok(seq), digest=seq)
    assert t.begin(b"a", 1, digest=222) is STALE


def test_the_window_forgets_the_oldest_and_calls_older_ones_stale() -> None:
    t = SessionTable(SessionLimits(window=3, max_sessions=10))
    for seq in range(1, 6):
        _run(t, b"a", seq)
    assert [s for s, _ in t.results(b"a")] == [3, 4, 5]
    assert t.begin(b"a", 2) is STALE
    assert t.begin(b"a", 4) == _ok(40)


def test_seqs_applied_out_of_order_are_trimmed_lowest_first_and_none_is_wrongly_stale() -> None:
    """An apply_many batch can commit seq 2 before a retried seq 1 (refused as busy the
    first time). Seq 1 was never applied: it must run, not be called stale; and the
    window must forget the lowest seqs, not the first inserted (found in review)."""
    t = SessionTable(SessionLimits(window=3, max_sessions=10))
    assert _run(t, b"a", 2) == "applied"
    assert _run(t, b"a", 1) == "applied"
    assert [s for s, _ in t.results(b"a")] == [1, 2]
    for seq in (4, 5, 3):
        _run(t, b"a", seq)
    assert [s for s, _ in t.results(b"a")] == [3, 4, 5]  # 1 and 2 trimmed, not 4
    assert t.begin(b"a", 2) is STALE and t.begin(b"a", 1) is STALE
    assert t.begin(b"a", 4) == _ok(40)
    assert t.begin(b"a", 7) is None  # never applied: runs


def test_the_stale_floor_travels_in_snapshots_and_older_tables_read_as_before() -> None:
    t = SessionTable(SessionLimits(window=2, max_sessions=10))
    for seq in (1, 2, 3, 4):
        _run(t, b"a", seq)
    _run(t, b"b", 7)  # never trimmed: nothing below 7 is stale
    restored = SessionTable(SessionLimits(window=2, max_sessions=10))
    restored.restore(t.pack())
    assert restored.pack() == t.pack()
    assert restored.begin(b"a", 2) is STALE and restored.begin(b"a", 3) == _ok(30)
    assert restored.begin(b"b", 5) is None
    untrimmed = SessionTable(SessionLimits(window=3, max_sessions=10))
    for seq in (2, 3, 4):  # a full window, never trimmed: seq 1 was never applied
        _run(untrimmed, b"a", seq)
    restored.restore(untrimmed.pack())
    assert restored.begin(b"a", 1) is None, "a replica restored from it agrees: seq 1 runs"
    full = [(3, [True, 30, "", ""]), (4, [True, 40, "", ""])]
    old = msgpack.packb([(b"", [(0, [True, [2, 10], "", ""])]), (b"a", full)], use_bin_type=True)
    restored.restore(old)  # an earlier version's full window: below it was stale then too
    assert restored.begin(b"a", 2) is STALE


def test_the_least_recently_active_client_goes_first() -> None:
    t = SessionTable(SessionLimits(window=4, max_sessions=2))
    _run(t, b"a", 1)
    _run(t, b"b", 1)
    _run(t, b"a", 2)  # a is now the most recent
    _run(t, b"c", 1)
    assert len(t) == 2
    assert t.results(b"b") == [] and t.results(b"a") and t.results(b"c")


def test_shrinking_limits_trims_at_once_and_the_same_way_everywhere() -> None:
    tables = [SessionTable(SessionLimits(window=8, max_sessions=8)) for _ in range(2)]
    for t in tables:
        for cid in (b"a", b"b", b"c"):
            for seq in range(1, 7):
                _run(t, cid, seq)
    tables[0].set_limits(SessionLimits(window=2, max_sessions=2))
    tables[1].restore(tables[1].pack())  # a round trip through a snapshot changes nothing
    tables[1].set_limits(SessionLimits(window=2, max_sessions=2))
    assert tables[0].pack() == tables[1].pack()
    assert len(tables[0]) == 2 and tables[0].results(b"a") == []
    assert [s for s, _ in tables[0].results(b"c")] == [5, 6]


def test_a_snapshot_carries_the_limits_in_force() -> None:
    t = SessionTable(SessionLimits(window=5, max_sessions=7))
    _run(t, b"a", 1)
    other = SessionTable(SessionLimits())
    other.restore(t.pack())
    assert other.limits == SessionLimits(window=5, max_sessions=7)
    assert other.results(b"a") == [(1, _ok(10))]


def test_an_earlier_version_can_still_restore_what_we_pack() -> None:
    """Rolling upgrades: a not-yet-upgraded follower may get our snapshot. This is how
    earlier versions read the sessions header; the limits ride as a session no client
    can have (id b"")."""
    t = SessionTable(SessionLimits(window=5, max_sessions=7))
    _run(t, b"a", 1)
    earlier: dict[bytes, dict[int, tuple[bool, object, str, str]]] = {}
    for cid, results in msgpack.unpackb(t.pack(), raw=False, strict_map_key=False):
        for seq, res in results:
            ok, result, error, message = res
            earlier.setdefault(cid, {})[seq] = (bool(ok), result, str(error), str(message))
    # the floor rides as seq 0, which no command has
    assert earlier[b"a"] == {0: (True, 0, "", ""), 1: _ok(10)} and set(earlier) == {b"", b"a"}


def test_a_snapshot_from_before_limits_travelled_keeps_ours() -> None:
    old_format = msgpack.packb([(b"a", [(1, [True, 10, "", ""])])], use_bin_type=True)
    t = SessionTable(SessionLimits(window=9, max_sessions=9))
    t.restore(old_format)
    assert t.limits == SessionLimits(window=9, max_sessions=9)
    assert t.begin(b"a", 1) == _ok(10)


def test_limits_round_trip_and_garbage_is_a_decode_error() -> None:
    lim = SessionLimits(window=17, max_sessions=3)
    assert SessionLimits.decode(lim.encode()) == lim
    bad = [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"session_window": 0, "max_sessions": 1}),
        msgpack.packb({"session_window": MAX_SESSION_WINDOW + 1, "max_sessions": 1}),
        msgpack.packb({"session_window": 1, "max_sessions": "x"}),
        msgpack.packb({"session_window": True, "max_sessions": 1}),
    ]
    for data in bad:
        with pytest.raises(DecodeError):
            SessionLimits.decode(data)


def test_config_rejects_limits_no_node_could_carry() -> None:
    def cfg(window: int = 256, count: int = 10) -> Config:
        return Config(
            node_id="n1",
            bind="tcp://127.0.0.1:1",
            data_dir="unused",
            session_window=window,
            max_sessions=count,
        )

    with pytest.raises(ConfigError, match="session_window"):
        cfg(window=MAX_SESSION_WINDOW + 1).validate()
    with pytest.raises(ConfigError, match="max_sessions"):
        cfg(count=0).validate()
    with pytest.raises(ConfigError, match="max_sessions must be <="):
        cfg(count=MAX_SESSIONS + 1).validate()


class _ModelTable:
    """The table's rules written as plainly as possible: the oracle for the fast one."""

    def __init__(self, window: int, max_sessions: int) -> None:
        self.window, self.max_sessions = window, max_sessions
        self.lru: list[bytes] = []  # least recently active first
        self.results: dict[bytes, dict[int, object]] = {}
        self.floors: dict[bytes, int] = {}
        self.digests: dict[bytes, dict[int, int]] = {}

    def _forget(self, cid: bytes) -> None:
        self.lru.remove(cid)
        for table in (self.results, self.floors, self.digests):
            table.pop(cid, None)

    def _trim(self, cid: bytes) -> None:
        results = self.results[cid]
        while len(results) > self.window:
            low = min(results)
            del results[low]
            self.digests.get(cid, {}).pop(low, None)
            self.floors[cid] = max(self.floors.get(cid, 0), low)

    def begin(self, cid: bytes, seq: int, digest: int) -> object:
        if cid in self.results:
            self.lru.remove(cid)
        else:
            self.results[cid] = {}
            if len(self.lru) + 1 > self.max_sessions:
                self._forget(self.lru[0])
        self.lru.append(cid)
        if seq in self.results[cid]:
            known = self.digests.get(cid, {}).get(seq)
            return REUSED if known is not None and known != digest else self.results[cid][seq]
        return STALE if seq <= self.floors.get(cid, 0) else None

    def record(self, cid: bytes, seq: int, result: object, digest: int) -> None:
        self.results[cid][seq] = result
        self.digests.setdefault(cid, {})[seq] = digest
        self._trim(cid)

    def set_limits(self, window: int, max_sessions: int) -> None:
        self.window, self.max_sessions = window, max_sessions
        while len(self.lru) > max_sessions:
            self._forget(self.lru[0])
        for cid in self.lru:
            self._trim(cid)

    def restored(self) -> None:
        self.digests = {}  # digests stay in memory: a restored table trusts every seq


@pytest.mark.parametrize("seed", range(8))
def test_the_table_follows_its_rules_over_random_histories(seed: int) -> None:
    """Retries, seqs out of order, reused seqs, evictions, shrinking limits and snapshot
    round trips, checked step by step against the plain model above."""
    import random

    rng = random.Random(seed)
    window, count = rng.randint(1, 6), rng.randint(1, 4)
    table, model = SessionTable(SessionLimits(window, count)), _ModelTable(window, count)
    clients = [bytes([65 + i]) for i in range(6)]
    top = dict.fromkeys(clients, 0)
    for step in range(3000):
        roll = rng.random()
        if roll < 0.01:
            window, count = rng.randint(1, 6), rng.randint(1, 4)
            table.set_limits(SessionLimits(window, count))
            model.set_limits(window, count)
            continue
        if roll < 0.02:
            packed = table.pack()
            if rng.random() < 0.5:  # as a node installs a snapshot: into its live table
                table.restore(packed)
            else:  # as a node restarts from one
                table = SessionTable(SessionLimits())
                table.restore(packed)
            model.restored()
            assert table.pack() == packed
            continue
        cid = rng.choice(clients)
        jump = rng.randint(-8, 2) if rng.random() < 0.97 else rng.randint(3, 40)
        seq = max(1, top[cid] + jump)  # mostly new, often a retry or late, now and then a gap
        top[cid] = max(top[cid], seq)
        digest = seq if rng.random() < 0.95 else -seq  # now and then a reused number
        got, want = table.begin(cid, seq, digest), model.begin(cid, seq, digest)
        assert got == want, (step, cid, seq)
        if got is None:
            result = (True, step, "", "")
            table.record(cid, seq, result, digest)
            model.record(cid, seq, result, digest)
        _assert_same_state(table, model)


def _assert_same_state(table: SessionTable, model: _ModelTable) -> None:
    """Every client's floor and results, in least-recently-active order, as a snapshot
    would carry them (the first packed session is the reserved limits one)."""
    packed = msgpack.unpackb(table.pack(), raw=False, strict_map_key=False)
    limits, sessions = packed[0], packed[1:]
    assert limits[1][0][1][1] == [model.window, model.max_sessions]
    assert [cid for cid, _ in sessions] == model.lru
    for cid, rows in sessions:
        (zero, (_, floor, _, _)), results = rows[0], rows[1:]
        assert zero == 0 and floor == model.floors.get(cid, 0), cid
        assert [(seq, tuple(r)) for seq, r in results] == sorted(model.results[cid].items())
