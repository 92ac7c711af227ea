"""One test per rule of the Raft paper §5.1-5.4 (in the spirit of etcd's raft_paper_test.go).

Each test drives a single core by hand: messages in with step(), Ready out,
persisted into a MemoryStorage, then advance().
"""

from __future__ import annotations

import pytest

from zraft.core import (
    AppendEntries,
    AppendResponse,
    CoreConfig,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    Membership,
    Message,
    Raft,
    Ready,
    RequestVote,
    Role,
    VoteResponse,
)
from zraft.testing.memory import MemoryStorage

PEERS = ("n1", "n2", "n3")


def make(
    node: str = "n1",
    peers: tuple[str, ...] = PEERS,
    log: list[tuple[int, int]] | None = None,
    term: int = 0,
    **kw: object,
) -> Raft:
    """A core with a pre-filled log of (term, index) NORMAL entries; pre-vote off."""
    st = MemoryStorage(Membership(voters={p: p for p in peers}))
    if log:
        st.append([Entry(t, i, EntryType.NORMAL, b"x%d" % i) for t, i in log])
    if term:
        st.set_hard_state(HardState(term, ""))
    kw.setdefault("pre_vote", False)
    kw.setdefault("check_quorum", False)
    return Raft(CoreConfig(node_id=node, **kw), st)  # type: ignore[arg-type]


def drive(r: Raft) -> Ready:
    """Act as the driver: persist, then advance. Returns the Ready."""
    rd = r.ready()
    st = r.storage
    assert isinstance(st, MemoryStorage)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    st.append(rd.entries)
    r.advance(rd)
    return rd


def msgs(r: Raft) -> list[Message]:
    out: list[Message] = []
    while r.has_ready():
        out += drive(r).messages
    return out


def elect(r: Raft) -> None:
    """Make ``r`` leader of PEERS via real votes."""
    r.campaign()
    for m in msgs(r):
        if isinstance(m, RequestVote):
            r.step(VoteResponse(m.term, m.to, r.id, True))
    assert r.role is Role.LEADER


def test_5_1_higher_term_makes_any_role_a_follower() -> None:
    """§5.1: a node seeing a larger term updates its term and reverts to follower."""
    for role_setup in ("follower", "candidate", "leader"):
        r = make()
        if role_setup == "candidate":
            r.campaign()
        elif role_setup == "leader":
            elect(r)
        new_term = r.term + 5
        r.step(Heartbeat(new_term, "n2", "n1", 0))
        assert (r.role, r.term, r.leader, r.vote) == (Role.FOLLOWER, new_term, "n2", "")


def test_5_1_stale_term_request_is_rejected() -> None:
    """§5.1: a request with a stale term is rejected; the reply carries the current term."""
    r = make(term=5, check_quorum=True)
    r.step(AppendEntries(3, "n2", "n1", 0, 0, (Entry(3, 1, EntryType.NORMAL, b"a"),), 0))
    out = msgs(r)
    assert r.last_index == 0, "stale entries must not be appended"
    assert [type(m) for m in out] == [AppendResponse] and out[0].term == 5


def test_5_2_follower_times_out_and_becomes_candidate() -> None:
    """§5.2: no word from a leader for an election timeout -> new term, vote self, ask all."""
    r = make()
    for _ in range(2 * r.config.election_ticks):
        r.tick()
    assert r.role is Role.CANDIDATE and r.term == 1 and r.vote == "n1"
    out = msgs(r)
    assert sorted(m.to for m in out if isinstance(m, RequestVote)) == ["n2", "n3"]


def test_5_2_election_timeouts_are_randomized_per_node_and_seed() -> None:
    """§5.2: timeouts are drawn from [T, 2T) so split votes resolve."""
    seen: set[int] = set()
    for seed in range(20):
        r = make(seed=seed)
        ticks = 0
        while r.role is Role.FOLLOWER:
            r.tick()
            ticks += 1
        assert r.config.election_ticks <= ticks < 2 * r.config.election_ticks
        seen.add(ticks)
    assert len(seen) > 3


def test_5_2_candidate_with_majority_becomes_leader_and_asserts_itself() -> None:
    """§5.2: votes from a majority win; the leader then sends to every follower."""
    r = make()
    r.campaign()
    msgs(r)
    r.step(VoteResponse(1, "n2", "n1", True))
    assert r.role is Role.LEADER
    out = msgs(r)
    assert sorted(m.to for m in out if isinstance(m, AppendEntries)) == ["n2", "n3"]


def test_5_2_candidate_loses_on_majority_of_rejections() -> None:
    r = make()
    r.campaign()
    msgs(r)
    r.step(VoteResponse(1, "n2", "n1", False))
    r.step(VoteResponse(1, "n3", "n1", False))
    assert r.role is Role.FOLLOWER and r.term == 1


def test_5_2_candidate_yields_to_leader_of_same_term() -> None:
    """§5.2: a candidate receiving AppendEntries from a leader of its term steps down."""
    r = make()
    r.campaign()
    r.step(AppendEntries(1, "n2", "n1", 0, 0, (), 0))
    assert r.role is Role.FOLLOWER and r.leader == "n2"


def test_5_2_one_vote_per_term_first_come_first_served() -> None:
    """§5.2: each server votes for at most one candidate per term (and persists it)."""
    r = make()
    r.step(RequestVote(1, "n2", "n1", 0, 0))
    rd = drive(r)
    assert rd.hard_state == HardState(1, "n2")
    assert [m.granted for m in rd.messages if isinstance(m, VoteResponse)] == [True]
    r.step(RequestVote(1, "n3", "n1", 0, 0))
    r.step(RequestVote(1, "n2", "n1", 0, 0))  # a retry from the same candidate is granted
    grants = [m.granted for m in msgs(r) if isinstance(m, VoteResponse)]
    assert grants == [False, True]


def test_5_2_split_vote_starts_a_new_term_after_timeout() -> None:
    r = make()
    r.campaign()
    for _ in range(2 * r.config.election_ticks):
        r.tick()
    assert r.role is Role.CANDIDATE and r.term == 2


def test_5_2_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    r = make(heartbeat_ticks=2)
    elect(r)
    msgs(r)
    r.tick()
    assert not [m for m in msgs(r) if isinstance(m, Heartbeat)]
    r.tick()
    assert sorted(m.to for m in msgs(r) if isinstance(m, Heartbeat)) == ["n2", "n3"]


def test_5_3_leader_appends_proposals_and_replicates_them() -> None:
    """§5.3: the leader appends the command to its log and sends AppendEntries."""
    r = make()
    elect(r)
    msgs(r)
    for peer in ("n2", "n3"):
        r.step(AppendResponse(1, peer, "n1", 1))
    term, index = r.propose([b"a", b"b"])
    rd = r.ready()
    assert (term, index) == (1, 2)
    assert [e.data for e in rd.entries] == [b"a", b"b"]
    sent = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert sorted(m.to for m in sent) == ["n2", "n3"]
    assert all([e.index for e in m.entries] == [2, 3] for m in sent)


def test_5_3_follower_rejects_when_prev_entry_does_not_match() -> None:
    """§5.3: the consistency check refuses entries whose predecessor differs."""
    r = make(log=[(1, 1), (1, 2)], term=2)
    r.step(AppendEntries(2, "n2", "n1", 2, 2, (Entry(2, 3, EntryType.NORMAL, b"z"),), 0))
    out = msgs(r)
    assert isinstance(out[0], AppendResponse) and out[0].reject
    assert (out[0].hint_term, out[0].hint_index) == (1, 1)
    assert r.last_index == 2


def test_5_3_follower_deletes_conflicting_suffix_and_appends() -> None:
    """§5.3: a conflicting entry and all that follow it are replaced by the leader's."""
    r = make(log=[(1, 1), (1, 2), (1, 3)], term=2)
    new = (Entry(2, 2, EntryType.NORMAL, b"n2"), Entry(2, 3, EntryType.NORMAL, b"n3"))
    r.step(AppendEntries(2, "n2", "n1", 1, 1, new, 0))
    rd = drive(r)
    assert [(e.term, e.index) for e in rd.entries] == [(2, 2), (2, 3)]
    storage = r.storage
    assert [storage.term(i) for i in (1, 2, 3)] == [1, 2, 2]
    assert any(isinstance(m, AppendResponse) and m.index == 3 for m in rd.messages)


def test_5_3_duplicate_append_does_not_truncate() -> None:
    """§5.3: an already-present prefix is not truncated by a stale/duplicated append."""
    r = make(log=[(1, 1), (1, 2), (1, 3)], term=1)
    r.step(AppendEntries(1, "n2", "n1", 0, 0, (Entry(1, 1, EntryType.NORMAL, b"x1"),), 0))
    msgs(r)
    assert r.last_index == 3


def test_5_3_leader_commits_once_a_majority_stores_the_entry() -> None:
    """§5.3: an entry is committed once replicated on a majority; followers learn it."""
    r = make()
    elect(r)
    msgs(r)
    r.propose([b"a"])
    msgs(r)
    assert r.commit == 0
    r.step(AppendResponse(1, "n2", "n1", 2))
    rd = drive(r)
    assert r.commit == 2
    assert [e.index for e in rd.committed_entries] == [1, 2]
    f = make("n2", term=1)
    f.step(AppendEntries(1, "n1", "n2", 0, 0, tuple(r.log.entries(1, 3, 1 << 20)), 2))
    rd = drive(f)
    assert f.commit == 2 and [e.index for e in rd.committed_entries] == [1, 2]


def test_5_3_committed_entries_are_applied_in_order_once() -> None:
    r = make(peers=("n1",))
    r.campaign()
    assert r.role is Role.LEADER
    applied: list[int] = []
    for batch in ([b"a"], [b"b", b"c"]):
        r.propose(batch)
        while r.has_ready():
            applied += [e.index for e in drive(r).committed_entries]
    assert applied == [1, 2, 3, 4]
    assert r.applied == 4


def test_a_long_commit_backlog_is_handed_out_in_slices() -> None:
    """Not a paper rule, a driver's need: a restarted node may have thousands of
    committed entries to apply; a Ready carries at most ``max_apply_entries`` of them,
    so the driver can send heartbeats between slices instead of going silent."""
    r = make(peers=("n1",), log=[(1, i) for i in range(1, 11)], term=1, max_apply_entries=4)
    r.campaign()
    assert r.role is Role.LEADER
    slices: list[list[int]] = []
    while r.has_ready():
        rd = drive(r)
        if rd.committed_entries:
            slices.append([e.index for e in rd.committed_entries])
    assert slices == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]  # 11: the new term's no-op
    assert r.applied == 11


def test_5_4_1_vote_denied_to_a_less_up_to_date_candidate() -> None:
    """§5.4.1: vote only if the candidate's log is at least as up-to-date (term, then index)."""
    cases = [((1, 5), False), ((2, 1), False), ((2, 2), True), ((3, 1), True)]
    for n, ((last_term, last_index), ok) in enumerate(cases):
        r = make(log=[(1, 1), (2, 2)], term=2)
        r.step(RequestVote(3, "n2", "n1", last_index, last_term))
        got = [m.granted for m in msgs(r) if isinstance(m, VoteResponse)]
        assert got == [ok], f"case {n}"


def test_5_4_2_previous_term_entries_are_not_committed_by_counting() -> None:
    """§5.4.2 / Figure 8: only current-term entries commit by replica count."""
    r = make(log=[(1, 1), (2, 2)], term=2)
    elect(r)
    assert r.term == 3
    out = msgs(r)
    assert any(isinstance(m, AppendEntries) for m in out)
    r.step(AppendResponse(3, "n2", "n1", 2))
    msgs(r)
    assert r.commit == 0, "index 2 is from term 2: a majority copy does not commit it"
    r.step(AppendResponse(3, "n2", "n1", 3))
    msgs(r)
    assert r.commit == 3


def test_5_4_2_new_leader_appends_a_noop_in_its_term() -> None:
    r = make(log=[(1, 1)], term=1)
    elect(r)
    rd = r.ready()
    assert [(e.term, e.index, e.type) for e in rd.entries] == [(2, 2, EntryType.NOOP)]


def test_the_noop_carries_the_drivers_payload_to_every_follower() -> None:
    """The node puts cluster-wide settings (session limits) in its no-op; the core only
    ships the bytes, in the entry every follower must accept before this term's others."""
    r = make(log=[(1, 1)], term=1, leader_noop_data=b"limits")
    elect(r)
    rd = drive(r)
    assert [(e.type, e.data) for e in rd.entries] == [(EntryType.NOOP, b"limits")]
    appends = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert appends and all(
        [(e.type, e.data) for e in m.entries] == [(EntryType.NOOP, b"limits")] for m in appends
    )


def test_persist_before_send_vote_and_hard_state_share_a_ready() -> None:
    """A vote leaves only in the same Ready as the hard state that records it."""
    r = make()
    r.step(RequestVote(1, "n3", "n1", 0, 0))
    rd = r.ready()
    assert rd.hard_state == HardState(1, "n3")
    assert any(isinstance(m, VoteResponse) and m.granted for m in rd.messages)


def test_snapshot_failed_discards_the_transfer_and_rejects() -> None:
    """The driver reports a bad checksum: nothing installs, the leader is told to restart."""
    from zraft.core import InstallSnapshot, SnapshotMeta, SnapshotResponse

    r = make("n2", term=1)
    meta = SnapshotMeta(10, 1, Membership(voters={p: p for p in PEERS}), size=4, crc32=0)
    r.step(InstallSnapshot(1, "n1", "n2", meta, 0, b"da", False))
    r.step(InstallSnapshot(1, "n1", "n2", meta, 2, b"ta", True))
    rd = r.ready()
    assert [c.offset for c in rd.snapshot_chunks] == [0, 2] and rd.snapshot_chunks[-1].done
    r.snapshot_failed(meta)
    r.advance(rd)
    rd = r.ready()
    assert rd.snapshot is None and r.commit == 0
    assert any(isinstance(m, SnapshotResponse) and m.reject for m in rd.messages)


def test_a_resumed_transfer_of_a_different_snapshot_at_the_same_index_starts_over() -> None:
    """A new leader's snapshot at the same index and term may hold other bytes (its
    snapshot() need not match ours byte for byte): resuming at the old offset made the
    driver's staging see a gap, and its reactor died (found in review)."""
    from zraft.core import InstallSnapshot, SnapshotMeta, SnapshotResponse

    r = make("n2", term=1)
    members = Membership(voters={p: p for p in PEERS})
    first = SnapshotMeta(10, 1, members, size=4, crc32=111)
    other = SnapshotMeta(10, 1, members, size=4, crc32=222)
    r.step(InstallSnapshot(1, "n1", "n2", first, 0, b"da", False))
    r.advance(r.ready())
    r.step(InstallSnapshot(1, "n3", "n2", other, 2, b"TA", True))  # resumed elsewhere
    rd = r.ready()
    assert not rd.snapshot_chunks, "no chunk of another snapshot is staged after ours"
    answers = [m for m in rd.messages if isinstance(m, SnapshotResponse)]
    assert answers and answers[-1].index == 10 and answers[-1].offset == 0  # start over


def test_10_2_1_leader_counts_its_own_entries_only_once_persisted() -> None:
    """Dissertation §10.2.1: the leader may send AppendEntries before its own write lands,
    because its own copy counts toward the commit only after advance() says it is durable."""
    r = make()
    elect(r)
    msgs(r)
    r.step(AppendResponse(1, "n2", "n1", 1))
    msgs(r)
    assert r.commit == 1
    r.propose([b"a"])
    rd = r.ready()
    assert rd.hard_state is None, "nothing the messages depend on awaits the disk"
    sent = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert sent and all(m.entries[-1].index == 2 for m in sent)
    r.step(AppendResponse(1, "n2", "n1", 2))
    assert r.commit == 1, "one follower plus an unpersisted leader copy is no majority"
    r.step(AppendResponse(1, "n3", "n1", 2))
    assert r.commit == 2, "two followers are a majority without the leader's copy"
    r.advance(rd)
    r2 = make()
    elect(r2)
    msgs(r2)
    r2.propose([b"b"])
    rd2 = r2.ready()
    r2.step(AppendResponse(1, "n2", "n1", 2))
    assert r2.commit == 1, "the no-op (durable here, acked there) commits; index 2 waits"
    r2.storage.append(rd2.entries)  # type: ignore[attr-defined]
    r2.advance(rd2)
    assert r2.commit == 2, "durable at the leader + one follower"


def _write_unsynced(r: Raft) -> Ready:
    """Act as a leader's driver that writes entries and lets a helper thread flush them."""
    rd = r.ready()
    assert rd.hard_state is None
    r.storage.append(rd.entries)  # type: ignore[attr-defined]
    r.advance(rd, synced=False)
    return rd


def test_10_2_1_written_but_unflushed_leader_entries_count_once_log_synced() -> None:
    """Dissertation §10.2.1 with the flush off the leader's critical path: a leader that
    has only written its entries counts its own copy when the driver reports the flush."""
    r = make()
    elect(r)
    msgs(r)
    r.step(AppendResponse(1, "n2", "n1", 1))
    msgs(r)
    r.propose([b"a"])
    _write_unsynced(r)
    r.step(AppendResponse(1, "n2", "n1", 2))
    assert r.commit == 1, "written, not flushed: one follower is no majority"
    r.log_synced(1)
    assert r.commit == 1, "a flush that stops short of index 2 does not count for it"
    r.log_synced(2)
    assert r.commit == 2, "flushed at the leader + one follower"
    r.propose([b"b"])
    _write_unsynced(r)
    r.log_synced(99)
    assert r.commit == 2, "a flush report is capped at what was written and needs a follower"
    r.step(AppendResponse(1, "n3", "n1", 3))
    assert r.commit == 3


def test_10_2_1_a_single_node_commits_only_when_its_flush_lands() -> None:
    r = make(peers=("n1",))
    r.campaign()
    msgs(r)
    assert r.role is Role.LEADER and r.commit == 1
    r.propose([b"a"])
    _write_unsynced(r)
    assert r.commit == 1 and not r.has_ready()
    r.log_synced(2)
    assert r.commit == 2 and r.has_ready()


def test_only_a_leader_may_advance_before_its_writes_are_durable() -> None:
    r = make()
    r.step(AppendEntries(1, "n2", "n1", 0, 0, (Entry(1, 1, EntryType.NORMAL, b"x"),), 0))
    rd = r.ready()
    with pytest.raises(RuntimeError, match="only a leader"):
        r.advance(rd, synced=False)
    r.advance(rd)
    r.log_synced(1)  # a follower ignores flush reports: it answers only after flushing
    assert r.role is Role.FOLLOWER
