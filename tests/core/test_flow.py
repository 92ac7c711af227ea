"""Flow control on the leader: when does it decide an append in flight was lost?

The transport is ordered and reliable while a connection lives, so a follower that
shows no progress for one heartbeat round is usually busy, not missing a message.
"""

from __future__ import annotations

from test_paper import elect, make, msgs

from zraft.core import AppendEntries, AppendResponse, Heartbeat, HeartbeatResponse, Raft


def _heartbeat_round(r: Raft, answer_from: str) -> list[AppendEntries]:
    """Tick until a heartbeat goes out; answer it from ``answer_from``; return appends sent."""
    out: list[AppendEntries] = []
    for _ in range(10):
        r.tick()
        sent = msgs(r)
        beats = [m for m in sent if isinstance(m, Heartbeat) and m.to == answer_from]
        if beats:
            r.step(HeartbeatResponse(r.term, answer_from, r.id, beats[0].ctx))
            out += [m for m in msgs(r) if isinstance(m, AppendEntries) and m.to == answer_from]
            return out
    raise AssertionError("no heartbeat within 10 ticks")


def test_a_busy_follower_is_not_resent_its_appends_after_one_quiet_round() -> None:
    r = make(election_ticks=10, heartbeat_ticks=1)
    elect(r)
    msgs(r)
    for peer in ("n2", "n3"):
        r.step(AppendResponse(r.term, peer, "n1", 1))  # both replicating from here on
    msgs(r)
    r.propose([b"a", b"b", b"c"])
    first = [m for m in msgs(r) if isinstance(m, AppendEntries) and m.to == "n2"]
    assert first and first[0].entries[0].index == 2, "sent once, now in flight"
    stall = r._stall_rounds()
    assert stall == 5, "half an election timeout of heartbeat rounds"
    # one answer records where the follower stands; then `stall` rounds without progress,
    # and only the last of them resends
    for quiet in range(stall):
        resent = _heartbeat_round(r, "n2")
        assert not resent, f"round {quiet} without progress: still just busy"
    resent = _heartbeat_round(r, "n2")
    assert resent and resent[0].entries[0].index == 2, "then it probes from match + 1"


def test_progress_between_rounds_resets_the_count() -> None:
    r = make(election_ticks=10, heartbeat_ticks=1)
    elect(r)
    msgs(r)
    for peer in ("n2", "n3"):
        r.step(AppendResponse(r.term, peer, "n1", 1))
    msgs(r)
    for k in range(3):  # a slow but moving follower: acks one entry per two rounds
        r.propose([b"x", b"y"])
        msgs(r)
        assert not _heartbeat_round(r, "n2")
        r.step(AppendResponse(r.term, "n2", "n1", 2 + 2 * k))
        msgs(r)
        assert not _heartbeat_round(r, "n2"), "progress came: no resend"
    for _ in range(r._stall_rounds() - 1):  # the last round showed progress: count anew
        assert not _heartbeat_round(r, "n2")
    assert _heartbeat_round(r, "n2"), "a follower that stops moving is probed in the end"


def test_a_newer_terms_notice_is_not_taken_for_an_ack_of_nothing() -> None:
    """A follower at a newer term answers a stale heartbeat with AppendResponse(index=0);
    if its sender leads again in that term by the time it lands, it must not move a
    probing follower to replicate from index 1 (a whole-log resend, or a snapshot)."""
    r = make(election_ticks=10, heartbeat_ticks=1)
    elect(r)
    msgs(r)
    before = r.status().progress["n2"]
    r.step(AppendResponse(r.term, "n2", "n1", 0))
    after = r.status().progress["n2"]
    assert (after.state, after.next, after.match) == (before.state, before.next, before.match)
    assert not [m for m in msgs(r) if isinstance(m, AppendEntries) and m.to == "n2"]


def test_a_snapshot_set_aside_mid_transfer_waits_for_the_next_one() -> None:
    """The driver's storage may set a snapshot aside while it is being sent (its file
    failed its checksum): with no other to send, the leader neither crashes nor spins,
    and sends the driver's next snapshot to the follower that needs one."""
    from zraft.core import Compacted, InstallSnapshot

    r = make(log=[(1, i) for i in range(1, 6)], term=1)
    elect(r)
    msgs(r)
    r.step(AppendResponse(r.term, "n2", "n1", 6))  # n2 has it all: index 6 commits
    msgs(r)
    st = r.storage
    st.create_snapshot(6, b"state")
    real_chunk = st.snapshot_chunk

    def rotten(index: int, offset: int, max_bytes: int) -> bytes:
        st._snap = None  # what set-aside leaves: no snapshot to send instead
        raise Compacted("failed its checksum: set aside")

    st.snapshot_chunk = rotten  # type: ignore[method-assign]
    r.step(AppendResponse(r.term, "n3", "n1", 5, True, 0, 1))  # n3 has nothing: compacted
    assert not [m for m in msgs(r) if isinstance(m, InstallSnapshot)]
    st.snapshot_chunk = real_chunk  # type: ignore[method-assign]
    r.propose([b"x"])
    msgs(r)
    r.step(AppendResponse(r.term, "n2", "n1", 7))
    msgs(r)
    fresh = st.create_snapshot(7, b"state, written again")
    sent: list[InstallSnapshot] = []
    for _ in range(5):
        r.tick()
        sent += [m for m in msgs(r) if isinstance(m, InstallSnapshot) and m.to == "n3"]
    assert sent and sent[0].meta == fresh and sent[0].offset == 0
