"""Scripted cluster scenarios over the deterministic simulator (invariants always on)."""

from __future__ import annotations

import pytest

from zraft.core import (
    AppendEntries,
    ChangeInProgress,
    Heartbeat,
    InstallSnapshot,
    Membership,
    Message,
    NotLeader,
    ProgressState,
    ProposalDropped,
    Role,
)
from zraft.testing.sim import Cluster, Faults, encode_state, random_run


def others(c: Cluster, node: str) -> list[str]:
    return sorted(n for n in c.nodes if n != node)


def committed_everywhere(c: Cluster, index: int) -> bool:
    return all(n.applied >= index for n in c.alive())


def test_initial_election_takes_one_round_of_votes() -> None:
    c = Cluster(3, seed=7)
    lead = c.wait_leader()
    assert [n.id for n in c.alive() if n.core().role is Role.LEADER] == [lead]
    assert c.core(lead).term == 1
    # one pre-vote round and one vote round: 2 requests and 2 answers each
    assert c.sent["RequestVote"] == 4 and c.sent["VoteResponse"] == 4
    assert all(c.core(n).leader == lead for n in c.nodes)


def test_idle_cluster_sends_only_heartbeats() -> None:
    c = Cluster(3, seed=3)
    c.wait_leader()
    c.tick(5)
    c.sent.clear()
    c.tick(50)
    assert set(c.sent) == {"Heartbeat", "HeartbeatResponse"}
    assert c.sent["Heartbeat"] == 2 * 50 == c.sent["HeartbeatResponse"]


def test_reelection_after_leader_loss() -> None:
    c = Cluster(3, seed=1)
    old = c.wait_leader()
    term = c.core(old).term
    c.crash(old)
    new = c.wait_leader()
    assert new != old and c.core(new).term > term
    c.restart(old)
    c.tick(30)
    assert c.core(old).role is Role.FOLLOWER and c.core(old).leader == new


def test_no_leader_without_quorum() -> None:
    c = Cluster(3, seed=2)
    lead = c.wait_leader()
    survivor = others(c, lead)[0]
    for n in c.nodes:
        if n != survivor:
            c.crash(n)
    term = c.core(survivor).term
    c.tick(300)
    assert c.leader() is None
    assert c.core(survivor).term == term, "pre-vote keeps a lonely node from bumping terms"


def test_agreement_with_followers_down() -> None:
    c = Cluster(5, seed=4)
    lead = c.wait_leader()
    down = others(c, lead)[:2]
    for n in down:
        c.crash(n)
    for i in range(10):
        assert c.propose(b"v%d" % i) is not None
    c.tick(3)
    last = c.core(lead).last_index
    assert all(c.nodes[n].applied == last for n in c.nodes if n not in down)
    for n in down:
        c.restart(n)
    assert c.run_until(lambda: committed_everywhere(c, last), 50)
    c.check_final()


def test_partitioned_old_leader_uncommitted_entries_are_overwritten() -> None:
    c = Cluster(3, seed=5)
    old = c.wait_leader()
    c.isolate(old)
    stale = [b"lost-%d" % i for i in range(5)]
    for v in stale:
        assert c.propose(v, node=old) is not None
    new = c.wait_leader()
    c.run_until(lambda: c.leader() != old, 100)
    new = c.leader()
    assert new is not None and new != old
    for i in range(5):
        assert c.propose(b"kept-%d" % i, node=new) is not None
    c.heal()
    c.tick(30)
    assert c.core(old).role is Role.FOLLOWER
    assert c.nodes[old].applied == c.nodes[new].applied
    assert not set(stale) & set(c.acked), "uncommitted entries of the old leader must vanish"
    assert {b"kept-%d" % i for i in range(5)} <= set(c.nodes[old].payloads)
    c.check_final()


def test_divergent_follower_catches_up_in_few_round_trips() -> None:
    """60 uncommitted entries on a stale branch, 60+ on the real one: a few rejections only."""
    c = Cluster(3, seed=6)
    old = c.wait_leader()
    c.isolate(old)
    c.core(old).propose([b"stale-%d" % i for i in range(60)])
    c.settle()
    new = c.wait_leader()
    c.run_until(lambda: c.leader() not in (None, old), 100)
    new = c.leader()
    assert new is not None
    for round_ in range(3):  # several terms on the winning branch
        for i in range(25):
            c.propose(b"new-%d-%d" % (round_, i), node=new)
        c.core(new).transfer_leader(others(c, old)[round_ % 2 == 0 and new == others(c, old)[0]])
        c.tick(15)
        new = c.leader()
        assert new is not None and new != old
    c.tick(5)
    assert c.core(old).last_index >= 60
    c.append_rejects = 0
    c.heal()
    c.tick(20)
    assert c.nodes[old].applied == c.nodes[new].applied > 60
    assert 1 <= c.append_rejects <= 4, c.append_rejects
    c.check_final()


@pytest.mark.parametrize("seed", range(12))
def test_figure_8_under_crashes(seed: int) -> None:
    """Leaders crash while entries of old terms are half replicated (Figure 8 conditions)."""
    faults = Faults(loss=0.05, crash=0.02, crash_mid_ready=0.01, restart_after_ticks=15)
    c = random_run(seed, ticks=250, faults=faults, voters=5, membership_changes=False)
    assert c.acked


@pytest.mark.parametrize("seed", range(8))
def test_churn_every_committed_value_survives(seed: int) -> None:
    faults = Faults(
        loss=0.05,
        dup=0.05,
        delay_max_ticks=2,
        reorder=True,
        crash=0.01,
        partition=0.03,
        partition_ticks=20,
        snapshot_every=15,
    )
    c = random_run(100 + seed, ticks=300, faults=faults, voters=3, membership_changes=False)
    assert len(c.acked) > 20


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_stops_a_rejoining_node_from_bumping_terms(pre_vote: bool) -> None:
    c = Cluster(3, seed=8, pre_vote=pre_vote)
    lead = c.wait_leader()
    term = c.core(lead).term
    loner = others(c, lead)[0]
    c.isolate(loner)
    c.tick(100)
    c.heal()
    c.tick(30)
    if pre_vote:
        assert c.core(loner).term == term and c.leader() == lead
        assert c.core(lead).term == term
    else:
        assert c.core(loner).term > term + 3, "without pre-vote the loner inflates its term"


def test_check_quorum_deposes_an_isolated_leader() -> None:
    c = Cluster(3, seed=9)
    lead = c.wait_leader()
    c.isolate(lead)
    c.tick(2 * c.core(lead).config.election_ticks)
    assert c.core(lead).role is Role.FOLLOWER
    with pytest.raises(NotLeader):
        c.core(lead).propose([b"x"])


def test_leader_transfer_to_a_lagging_target() -> None:
    c = Cluster(3, seed=10)
    lead = c.wait_leader()
    target = others(c, lead)[0]
    c.cut(lead, target)
    for i in range(5):
        c.propose(b"v%d" % i)
    c.core(lead).transfer_leader(target)
    with pytest.raises(ProposalDropped):
        c.core(lead).propose([b"refused"])
    c.heal()
    assert c.run_until(lambda: c.leader() == target, 10)
    assert c.core(target).term == c.core(lead).term
    assert c.core(lead).role is Role.FOLLOWER
    assert c.propose(b"after") is not None
    c.tick(3)
    c.check_final()


def test_leader_transfer_to_a_target_caught_up_by_a_snapshot_of_the_whole_log() -> None:
    """Thesis §3.10: the leader sends TimeoutNow once the target's log matches its own.
    A snapshot at the leader's last index (an idle cluster; proposals are refused while
    transferring) is acknowledged by an append whose index does not move the target's
    match: that ack must still complete the transfer."""
    c = Cluster(3, seed=10)
    lead = c.wait_leader()
    target = others(c, lead)[0]
    c.crash(target)
    for i in range(10):
        c.propose(b"v%d" % i)
    c.tick(2)
    node = c.nodes[lead]
    node.storage.create_snapshot(node.applied, encode_state(node.payloads))
    assert node.storage.snapshot_meta().index == c.core(lead).last_index
    c.restart(target)
    c.core(lead).transfer_leader(target)
    assert c.run_until(lambda: c.leader() == target, c.core(lead).config.election_ticks)
    assert c.sent["InstallSnapshot"] >= 1 and c.sent["TimeoutNow"] == 1
    assert c.propose(b"after") is not None
    c.tick(3)
    c.check_final()


def test_leader_transfer_aborts_after_an_election_timeout() -> None:
    c = Cluster(3, seed=11, check_quorum=False)
    lead = c.wait_leader()
    target = others(c, lead)[0]
    c.isolate(target)
    c.core(lead).transfer_leader(target)
    with pytest.raises(ProposalDropped):
        c.core(lead).propose([b"x"])
    c.tick(c.core(lead).config.election_ticks + 1)
    assert c.leader() == lead
    assert c.propose(b"accepted again") is not None


def test_learner_replicates_without_voting_then_is_promoted() -> None:
    c = Cluster(3, learners=1, seed=12)
    lead = c.wait_leader()
    learner = "n4"
    assert learner in c.core(lead).membership.learners
    c.propose(b"a")
    c.tick(2)
    assert c.nodes[learner].payloads == [b"a"]
    # learners do not count: with two voters down nothing commits
    down = [n for n in others(c, lead) if n != learner]
    for n in down:
        c.crash(n)
    before = c.core(lead).commit
    c.propose(b"b")
    c.tick(3)
    assert c.core(lead).commit == before
    for n in down:
        c.restart(n)
    c.tick(20)
    lead = c.wait_leader()
    m = c.core(lead).membership
    voters = {**m.voters, learner: m.learners[learner]}
    c.core(lead).propose_membership(Membership(voters=voters))
    with pytest.raises(ChangeInProgress):
        c.core(lead).propose_membership(Membership(voters=dict(m.voters)))
    c.settle()
    c.tick(3)
    assert all(learner in c.core(n).membership.voters for n in c.nodes)
    assert c.core(lead).status().progress[learner].state is ProgressState.REPLICATE
    c.check_final()


def test_removing_the_leader() -> None:
    c = Cluster(3, seed=13)
    lead = c.wait_leader()
    c.tick(2)
    m = c.core(lead).membership
    voters = {k: v for k, v in m.voters.items() if k != lead}
    c.core(lead).propose_membership(Membership(voters=voters))
    c.settle()
    c.tick(2)
    assert c.core(lead).role is Role.FOLLOWER, "steps down once the removal commits"
    sent_by_old: list[Message] = []
    c.msg_filter = lambda msg: sent_by_old.append(msg) or True if msg.frm == lead else True
    new = c.wait_leader()
    assert new != lead and lead not in c.core(new).membership.voters
    c.tick(50)
    assert c.leader() == new
    assert not [x for x in sent_by_old if isinstance(x, Heartbeat | AppendEntries)]
    assert c.core(lead).role is Role.FOLLOWER, "a removed node never campaigns"
    assert c.propose(b"two-node cluster works") is not None
    c.tick(2)
    c.check_final()


def test_read_index_confirms_with_a_heartbeat_round() -> None:
    c = Cluster(3, seed=14)
    lead = c.wait_leader()
    c.propose(b"w")
    c.tick(1)
    commit = c.core(lead).commit
    hb = c.sent["Heartbeat"]
    assert c.read(b"ctx1")
    assert c.sent["Heartbeat"] == hb + 2, "one confirmation round to both followers"
    assert c.nodes[lead].read_results[b"ctx1"] == commit
    follower = others(c, lead)[0]
    with pytest.raises(NotLeader) as err:
        c.core(follower).read_index(b"x")
    assert err.value.leader == lead
    # a leader cut off from everyone never confirms
    c.isolate(lead)
    assert c.read(b"ctx2", node=lead)
    c.tick(3)
    assert b"ctx2" not in c.nodes[lead].read_results


def test_lease_read_needs_no_round() -> None:
    c = Cluster(3, seed=15, lease_reads=True)
    lead = c.wait_leader()
    c.tick(3)
    hb = c.sent["Heartbeat"]
    assert c.read(b"lease")
    assert c.sent["Heartbeat"] == hb
    assert c.nodes[lead].read_results[b"lease"] == c.core(lead).commit
    # once the quorum goes quiet the lease runs out and reads need a round again
    c.isolate(lead)
    c.tick(c.core(lead).config.election_ticks - 1)
    assert c.core(lead).role is Role.LEADER
    assert c.read(b"late")
    assert b"late" not in c.nodes[lead].read_results


def test_a_leader_resumed_after_a_stall_keeps_leading_when_no_other_quorum_formed() -> None:
    """A stall is the stalled node's own silence. One voter down, the leader stopped
    for four election timeouts: the other voter tries pre-votes nobody grants. On resume
    the leader steps what queued, heartbeats at once and keeps its term; ticking the
    missed time through as silence deposed it and cost an election."""
    c = Cluster(3, seed=21)
    lead = c.wait_leader()
    down, live = others(c, lead)
    c.crash(down)
    term = c.core(lead).term
    c.pause(lead)
    c.tick(4 * c.core(lead).config.election_ticks)
    assert c.core(live).role is Role.PRE_CANDIDATE
    c.resume(lead)
    assert c.core(lead).role is Role.LEADER and c.core(lead).term == term
    assert c.propose(b"after the stall") is not None
    c.tick(2)
    assert c.nodes[live].payloads[-1] == b"after the stall"
    assert c.core(live).role is Role.FOLLOWER and c.core(live).leader == lead
    c.tick(3 * c.core(lead).config.election_ticks)
    assert c.core(lead).term == term, "its followers answer: it keeps its quorum check"


def test_a_stalled_leader_cut_off_from_its_quorum_still_steps_down() -> None:
    """A stall restarts the quorum window, it does not excuse a partition: one election
    timeout after it resumes, a leader nobody answers steps down."""
    c = Cluster(3, seed=22)
    lead = c.wait_leader()
    c.isolate(lead)
    c.pause(lead)
    c.tick(3 * c.core(lead).config.election_ticks)
    c.resume(lead)
    assert c.core(lead).role is Role.LEADER
    c.tick(c.core(lead).config.election_ticks)
    assert c.core(lead).role is Role.FOLLOWER


def test_a_leader_that_keeps_stalling_and_hears_from_nobody_still_steps_down() -> None:
    """The fresh quorum window is granted once per passed check: a cut-off leader whose
    turns keep stalling (a stuck disk) cannot renew it forever."""
    c = Cluster(3, seed=24)
    lead = c.wait_leader()
    e = c.core(lead).config.election_ticks
    c.isolate(lead)
    for _ in range(3):
        if c.core(lead).role is not Role.LEADER:
            break
        c.pause(lead)
        c.tick(e // 2 + 1)  # just long enough to count as a stall
        c.resume(lead)
        c.tick(e - 2)
    assert c.core(lead).role is Role.FOLLOWER


def test_a_stall_drops_a_leadership_transfer() -> None:
    """The transfer's timing is lost with the stall: the leader takes proposals again
    at once rather than refusing them for another election timeout."""
    c = Cluster(3, seed=25)
    lead = c.wait_leader()
    target = others(c, lead)[0]
    c.cut(lead, target)  # the TimeoutNow never arrives
    c.core(lead).transfer_leader(target)
    with pytest.raises(ProposalDropped):
        c.core(lead).propose([b"refused"])
    c.pause(lead)
    c.tick(c.core(lead).config.election_ticks)
    c.resume(lead)
    assert c.core(lead).role is Role.LEADER
    assert c.propose(b"accepted") is not None


def test_a_short_catch_up_sends_one_heartbeat_round_not_one_per_tick() -> None:
    """A burst of rounds answered with no progress in between would look like a follower
    that stopped making progress (and send it back to probing)."""
    c = Cluster(3, seed=26)
    lead = c.wait_leader()
    c.tick(2)
    before = c.sent["Heartbeat"]
    c.pause(lead)
    c.tick(4)
    assert c.sent["Heartbeat"] == before
    c.resume(lead)
    assert c.sent["Heartbeat"] == before + 2, "one round to each of the two followers"


def test_a_lease_does_not_outlive_a_stall() -> None:
    """The stall counts on the clock: a leader stopped while the others elected a new one
    and committed must not answer a lease read from before the stall (a stale read)."""
    c = Cluster(3, seed=23, lease_reads=True)
    old = c.wait_leader()
    c.tick(2)
    c.isolate(old)
    c.pause(old)
    new = c.wait_leader()
    assert new != old
    assert c.propose(b"written while it slept") is not None
    c.resume(old)
    assert c.core(old).role is Role.LEADER, "it heard nothing: it still thinks it leads"
    assert c.read(b"stale?", node=old)
    assert b"stale?" not in c.nodes[old].read_results, "no lease: it needs a quorum round"
    c.tick(3)
    assert b"stale?" not in c.nodes[old].read_results


def test_a_restarted_follower_refuses_votes_while_the_old_leaders_lease_may_hold() -> None:
    """The leader counts a follower's ack from before its crash toward its lease. A
    follower that forgot, on restart, that it had just heard the leader voted at once,
    and a new leader committed while the old one still served lease reads (found in
    review: one-way cut, then the old leader cut off, then a follower restarted)."""
    c = Cluster(3, seed=1, lease_reads=True)
    old = c.wait_leader()
    a, b = others(c, old)
    c.tick(3)
    c.cut_one_way(old, b)  # b stops hearing the leader and pre-votes; leases refuse it
    c.tick(25)
    while c.core(b)._timeout - c.core(b)._election_elapsed != 2:  # b about to campaign
        c.tick(1)
    c.isolate(old)  # just after a acked its heartbeat
    c.crash(a)
    c.restart(a)
    cut = c.now
    while c.leader() in (None, old):
        assert c.now - cut < 100, "no new leader"
        c.tick(1)
    assert c.propose(b"new value", node=c.leader()) is not None
    c.tick(1)
    c.read(b"stale?", node=old)  # the simulator raises on a stale read
    assert b"stale?" not in c.nodes[old].read_results


def test_repeated_transfer_requests_do_not_keep_a_cut_off_leader_leading() -> None:
    """Each transfer used to restart the quorum check's window."""
    c = Cluster(3, seed=3)
    lead = c.wait_leader()
    targets = others(c, lead)
    ticks = c.core(lead).config.election_ticks
    c.isolate(lead)
    for k in range(6):
        if c.core(lead).role is not Role.LEADER:
            break
        c.core(lead).transfer_leader(targets[k % 2])
        c.tick(ticks - 1)
    assert c.core(lead).role is not Role.LEADER


def test_snapshot_install_with_lost_chunks_and_leader_change() -> None:
    c = Cluster(3, seed=16, snapshot_chunk_bytes=16, check_quorum=True)
    lead = c.wait_leader()
    lagger = others(c, lead)[0]
    c.crash(lagger)
    for i in range(60):
        c.propose(b"value-%03d" % i)
    c.tick(2)
    for n in c.alive():
        st = n.storage
        from zraft.testing.sim import encode_state

        st.create_snapshot(n.applied, encode_state(n.payloads))
    for n in c.nodes:
        if n != lagger:
            c.drop(n, lagger, 0.3)
    c.restart(lagger)
    assert c.run_until(lambda: c.sent["InstallSnapshot"] > 10, 40)
    assert c.core(lead).status().progress[lagger].state is ProgressState.SNAPSHOT
    assert c.nodes[lagger].applied < 60
    c.crash(lead)  # leader change mid-transfer
    new = c.wait_leader()
    assert new != lead
    assert c.run_until(lambda: c.nodes[lagger].applied >= 61, 300)
    assert c.nodes[lagger].storage.snapshot_meta() is not None
    c.restart(lead)
    c.heal()
    c.tick(20)
    assert c.nodes[lagger].payloads == c.nodes[new].payloads
    c.check_final()


def test_corrupt_snapshot_is_refetched() -> None:
    c = Cluster(3, seed=17, snapshot_chunk_bytes=32, faults=Faults(corrupt_snapshot=1.0))
    lead = c.wait_leader()
    lagger = others(c, lead)[0]
    c.crash(lagger)
    c.nodes[lagger].down_until = 1 << 30
    for i in range(30):
        c.propose(b"v%d" % i)
    from zraft.testing.sim import encode_state

    st = c.nodes[lead].storage
    st.create_snapshot(c.nodes[lead].applied, encode_state(c.nodes[lead].payloads))
    c.restart(lagger)
    c.tick(10)
    assert c.nodes[lagger].storage.snapshot_meta() is None, "a corrupt snapshot is never installed"
    assert c.nodes[lagger].applied <= 1
    assert c.sent["InstallSnapshot"] > 1, "the leader restarts the transfer"
    c.faults = Faults()
    assert c.run_until(lambda: c.nodes[lagger].applied >= 31, 50)
    c.check_final()


def test_message_filter_sees_install_snapshot_type() -> None:
    """Guard for the scenario helpers: filters get real message objects."""
    seen: list[type] = []
    c = Cluster(1, seed=0)
    c.msg_filter = lambda m: seen.append(type(m)) or True
    c.wait_leader()
    assert InstallSnapshot not in seen


def _change(c: Cluster, voters: list[str], learners: tuple[str, ...] | list[str] = ()) -> int:
    """Propose a membership from the leader, let it commit everywhere reachable; its index."""
    lead = c.wait_leader()
    _term, index = c.core(lead).propose_membership(
        Membership(
            voters={v: f"addr-{v}" for v in voters}, learners={x: f"addr-{x}" for x in learners}
        )
    )
    assert c.run_until(lambda: c.core(lead).commit >= index, 200), "the change did not commit"
    c.tick(3)
    return index


def test_wiped_rejoiners_replaying_an_old_config_elect_no_leader() -> None:
    """Found by the 30-minute gauntlet: two nodes, each removed, wiped and re-added, were
    catching up from index 1 and stood at an old configuration in which they were two of
    three voters. They elected a leader between them and overwrote what the real cluster
    had committed. A re-provisioned node now neither campaigns nor votes until it has
    applied the entry that added it (``Raft.await_join``)."""
    c = Cluster(3, seed=31, max_msg_entries=1)
    z = c.wait_leader()  # the survivor
    x, y = others(c, z)
    c.propose(b"before")
    _change(c, [z, x])  # remove y, add it back, promote it: a logged 3-voter config
    _change(c, [z, x], [y])
    old = _change(c, [z, x, y])
    stale: set[str] = set()
    # the wiped nodes get entries up to the old config only (one entry per message; an
    # append they would reject still arrives, so the leader finds where they stand)
    c.msg_filter = lambda m: (
        not (
            isinstance(m, AppendEntries)
            and m.to in stale
            and m.entries
            and m.entries[-1].index > old
            and m.prev_index <= c.core(m.to).last_index
        )
    )
    _change(c, [z, y])  # remove x, wipe it, add it back as a learner
    c.wipe(x)
    stale.add(x)
    join_x = _change(c, [z, y], [x])
    c.core(x).await_join(join_x)  # what the add_member answer tells a joining node
    assert c.run_until(lambda: c.core(x).last_index >= old, 500)
    _change(c, [z], [x])  # now y: remove (z alone is a quorum), wipe, re-add
    c.wipe(y)
    stale.add(y)
    join_y = _change(c, [z], [x, y])
    c.core(y).await_join(join_y)
    assert c.run_until(lambda: c.core(y).last_index >= old, 500)
    for n in stale:
        assert c.core(n).last_index == old and y in c.core(n).membership.voters
    for i in range(5):
        c.propose(f"committed by z alone {i}".encode(), z)
    c.tick(5)
    committed = c.core(z).commit
    c.isolate(z)  # x and y now see only each other and a config that says they are 2 of 3
    c.tick(400)
    assert c.leader() in (None, z), "two half-replayed rejoiners elected a leader"
    assert all(c.core(n).role is not Role.LEADER for n in stale)
    c.msg_filter = None
    c.heal()
    assert c.run_until(lambda: all(c.core(n).applied >= max(join_x, join_y) for n in stale), 2000)
    assert c.run_until(lambda: all(c.nodes[n].applied >= committed for n in c.nodes), 2000)
    _change(c, [z, x], [y])
    _change(c, [z, x, y])
    c.check_final()
