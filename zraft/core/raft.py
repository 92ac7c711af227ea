"""The Raft state machine: roles, elections, replication, commit, reads, membership, snapshots.

Pure and deterministic: time is ``tick()``, randomness is a ``random.Random``
seeded from the config, input is ``step(msg)`` and the public calls, output is
the :class:`Ready` batch. The driver persists, sends, applies, then calls
:meth:`Raft.advance`.

Errors split by whose fault: misuse by the driver raises (or asserts); a stale
or malformed message from a peer is dropped and counted in ``dropped``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from zraft.core.log import RaftLog
from zraft.core.progress import PeerProgress, Progress, ProgressState
from zraft.core.types import (
    NONE,
    AppendEntries,
    AppendResponse,
    Compacted,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    LogStorage,
    Membership,
    Message,
    NodeId,
    ReadState,
    Ready,
    RequestVote,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    SnapshotResponse,
    SoftState,
    TimeoutNow,
    VoteResponse,
)

#: Snapshot chunks a leader keeps in flight per follower.
SNAPSHOT_WINDOW_CHUNKS = 4
#: Bounds on queued read requests (backpressure, not memory growth).
MAX_PENDING_READS = 4096
#: Heartbeat rounds remembered for lease bookkeeping.
MAX_ROUNDS_REMEMBERED = 256
#: Bytes of config history scanned per storage read at startup.
SCAN_BYTES = 4 << 20


class NotLeader(Exception):
    """This node is not the leader; ``leader`` is its best guess (may be NONE)."""

    def __init__(self, leader: NodeId) -> None:
        super().__init__(f"not the leader (leader hint: {leader!r})")
        self.leader = leader


class ProposalDropped(Exception):
    """The proposal was refused (backpressure, leader transfer); retry later."""


class ChangeInProgress(Exception):
    """A membership change is still uncommitted; only one may be in flight."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    node_id: NodeId
    election_ticks: int = 10  # timeout randomized in [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    max_msg_entries: int = 1024
    max_msg_bytes: int = 1 << 20
    #: committed entries handed per Ready: a long backlog (a restart) is applied in
    #: slices the driver can spread over its turns, heartbeats going out between
    max_apply_entries: int = 4096
    max_inflight_msgs: int = 64
    max_uncommitted_bytes: int = 64 << 20  # propose() raises ProposalDropped beyond this
    snapshot_chunk_bytes: int = 1 << 20
    #: opaque payload of each new leader's no-op entry: the node carries cluster-wide
    #: settings in it (see zraft.sessions); the core never reads it
    leader_noop_data: bytes = b""
    seed: int = 0

    def __post_init__(self) -> None:
        assert self.node_id, "node ids are non-empty strings"
        assert 0 < self.heartbeat_ticks < self.election_ticks, "heartbeat < election timeout"
        assert self.max_msg_entries > 0 and self.max_msg_bytes > 0 and self.max_apply_entries > 0
        assert self.max_inflight_msgs > 0 and self.snapshot_chunk_bytes > 0
        assert self.max_uncommitted_bytes > 0
        assert len(self.leader_noop_data) <= self.max_msg_bytes, "a no-op fits in a message"
        assert not self.lease_reads or self.check_quorum, "lease reads need check_quorum"


@dataclass(frozen=True, slots=True)
class CoreStatus:
    id: NodeId
    role: Role
    term: int
    leader: NodeId
    vote: NodeId
    commit: int
    applied: int
    last_index: int
    first_index: int
    membership: Membership
    progress: dict[NodeId, PeerProgress] = field(default_factory=dict)
    #: a re-provisioned node waiting to apply the entry that added it (see await_join)
    joining: bool = False


@dataclass(slots=True)
class _PendingRead:
    ctx: bytes
    index: int
    round: int
    acks: set[NodeId]


def _round_ctx(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _snapshot_id(meta: SnapshotMeta) -> tuple[int, int, int, int]:
    return meta.index, meta.term, meta.size, meta.crc32


class Raft:
    """One node's Raft core. See the module docstring and :class:`Ready`."""

    def __init__(self, config: CoreConfig, storage: LogStorage, applied: int = 0) -> None:
        self.config = config
        self._id = config.node_id
        self._rng = random.Random(f"{config.seed}:{config.node_id}")
        self.storage = storage
        self.log = RaftLog(storage)
        hs, membership = storage.initial_state()
        self._term = hs.term
        self._vote = hs.vote
        self._role = Role.FOLLOWER
        self._leader = NONE
        snap = storage.snapshot_meta()
        snap_index = snap.index if snap is not None else 0
        assert applied <= self.log.last_index(), "applied beyond the log"
        self._commit = max(applied, snap_index, self.log.first_index() - 1)
        self._applied = self._commit
        self._apply_handed = self._commit
        #: (index, membership) of every CONFIG that may still be truncated, plus a base
        self._configs: list[tuple[int, Membership]] = self._load_configs(membership, snap)
        self.dropped = 0
        #: followers that reported losing acknowledged entries (repaired logs)
        self.lost_reports = 0
        self._msgs: list[Message] = []
        self._chunks: list[SnapshotChunk] = []
        self._read_states: list[ReadState] = []
        self._outstanding: Ready | None = None
        self._prev_hs = hs
        self._prev_soft = SoftState(self._role, self._leader, self._term)
        self._now = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = 0
        self._reset_timeout()
        self._votes: dict[NodeId, bool] = {}
        self._prs: dict[NodeId, Progress] = {}
        self._transferee = NONE
        self._transfer_elapsed = 0  #: ticks since the transfer began
        #: a long stall restarted this leader's quorum window (see catch_up)
        self._stall_excused = False
        #: A restarted node forgot when it last heard a leader, and a leader's lease
        #: counts its acks from before the crash: it refuses votes for one election
        #: timeout as if it had just heard one (§6.4.1 leases rely on §4.2.3). Only for
        #: lease reads (without them an early vote is safe, and the wait would delay an
        #: election that needs this node); a node that never had a term has no leader.
        self._restart_guard = config.lease_reads and hs.term > 0
        self._lease_ok_in_term = True
        self._uncommitted: deque[tuple[int, int]] = deque()
        self._uncommitted_bytes = 0
        self._round = 0
        self._round_ticks: dict[int, int] = {}
        self._reads: deque[_PendingRead] = deque()
        self._reads_waiting: deque[tuple[bytes, bool]] = deque()  #: (ctx, lease allowed)
        self._read_round_needed = False
        self._snap_recv: tuple[SnapshotMeta, int, NodeId] | None = None
        self._snap_verifying: SnapshotMeta | None = None
        #: see await_join: (waiting, index of the entry that added us, if known)
        self._joining = False
        self._join_index: int | None = None

    def _load_configs(
        self, latest: Membership, snap: SnapshotMeta | None
    ) -> list[tuple[int, Membership]]:
        """Rebuild the config history: a base plus every CONFIG entry in the log."""
        found: list[tuple[int, Membership]] = []
        lo, hi = self.log.first_index(), self.log.last_index() + 1
        while lo < hi:
            ents = self.log.entries(lo, hi, SCAN_BYTES)
            for e in ents:
                if e.type == EntryType.CONFIG:
                    found.append((e.index, Membership.decode(e.data)))
            lo = ents[-1].index + 1
        if snap is not None:
            base = (snap.index, snap.membership)
        else:
            boot = getattr(self.storage, "bootstrap_membership", None)
            guess = latest if not found else found[0][1]
            base = (0, boot() if callable(boot) else guess)
        return [base, *found]

    # ------------------------------------------------------------------ properties
    @property
    def id(self) -> NodeId:
        return self._id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> NodeId:
        return self._leader

    @property
    def vote(self) -> NodeId:
        return self._vote

    @property
    def commit(self) -> int:
        return self._commit

    @property
    def applied(self) -> int:
        return self._applied

    @property
    def membership(self) -> Membership:
        return self._configs[-1][1]

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    def _is_voter(self, node: NodeId | None = None) -> bool:
        return (node or self._id) in self.membership.voters

    def _promotable(self) -> bool:
        """May this node campaign? Voters may; so may a voter whose removal is uncommitted.

        The second case matters: a removed leader's CONFIG entry may exist only on
        nodes that no longer count themselves, and only they have the newest log.
        Once the removal is committed the node never campaigns again.
        """
        if self._joining:
            return False
        if self._is_voter():
            return True
        c = self._configs
        return len(c) >= 2 and c[-1][0] > self._commit and self._id in c[-2][1].voters

    def _quorum(self) -> int:
        return len(self.membership.voters) // 2 + 1

    def status(self) -> CoreStatus:
        return CoreStatus(
            id=self._id,
            role=self._role,
            term=self._term,
            leader=self._leader,
            vote=self._vote,
            commit=self._commit,
            applied=self._applied,
            last_index=self.log.last_index(),
            first_index=self.log.first_index(),
            membership=self.membership,
            progress={k: p.snapshot() for k, p in self._prs.items()},
            joining=self._joining,
        )

    # ------------------------------------------------------------------ re-provisioned nodes
    def await_join(self, index: int | None) -> None:
        """Neither campaign nor vote until ``index`` (the entry that added us) is applied.

        For a node that starts empty and joins a running cluster under an id it may
        have had before. Catching up from the leader's log, it replays configurations
        from before it was wiped, some listing it as a voter; two such nodes once made
        a quorum of a stale configuration and elected a leader that overwrote committed
        entries. ``None`` means the index is not known yet: wait until it is.
        """
        self._joining = True
        if index is not None:
            self._join_index = max(index, self._join_index or 0)
        self._maybe_end_join()

    @property
    def joining(self) -> bool:
        return self._joining

    @property
    def transferee(self) -> NodeId:
        """The voter a leadership transfer in progress hands over to (NONE: none)."""
        return self._transferee

    @property
    def config_index(self) -> int:
        """Index of the newest membership entry in the log (0: the bootstrap one)."""
        return self._configs[-1][0]

    def _maybe_end_join(self) -> None:
        if self._joining and self._join_index is not None and self._applied >= self._join_index:
            self._joining = False

    # ------------------------------------------------------------------ role changes
    def _reset_timeout(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        e = self.config.election_ticks
        self._timeout = self._rng.randrange(e, 2 * e)

    def _reset(self, term: int) -> None:
        if term != self._term:
            assert term > self._term, "terms never go backwards"
            self._term = term
            self._vote = NONE
            self._lease_ok_in_term = True
        self._leader = NONE
        self._reset_timeout()
        self._stall_excused = False
        self._restart_guard = False
        self._votes = {}
        self._prs = {}
        self._transferee = NONE
        self._reads.clear()
        self._reads_waiting.clear()
        self._read_round_needed = False
        self._uncommitted.clear()
        self._uncommitted_bytes = 0

    def _become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader = leader

    def _become_pre_candidate(self) -> None:
        assert self._role is not Role.LEADER, "a leader does not pre-campaign"
        self._reset(self._term)
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self._role is not Role.LEADER, "a leader does not campaign"
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE, "only a candidate becomes leader"
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader = self._id
        last = self.log.last_index()
        for node in sorted(self.membership.ids() | {self._id}):
            self._prs[node] = Progress(last + 1)
        me = self._prs[self._id]
        me.match = self.log.stable_index()
        me.next = me.match + 1
        self._append_local([(EntryType.NOOP, self.config.leader_noop_data)])
        self._bcast_append()

    # ------------------------------------------------------------------ tick
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick(beat=True)

    def _tick(self, beat: bool) -> None:
        self._now += 1
        if self._role is Role.LEADER:
            self._tick_leader(beat)
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._timeout and self._promotable():
                self._start_election(transfer=False)

    def catch_up(self, ticks: int) -> None:
        """Advance by ``ticks`` that passed while the driver could not run (GC, SIGSTOP).

        A short delay is ticked through, with one heartbeat round at the end rather than
        one per tick (a burst of rounds would look like a follower making no progress).
        A stall of more than half an election timeout counts on the clock (acks age, so
        lease reads wait for a fresh quorum ack) but not as the others' silence: they
        could not reach us either. A follower's election timer moves on by one tick; a
        leader heartbeats at once, drops a leadership transfer whose timing the stall
        broke, and gives its followers a fresh election timeout before its quorum check.
        Without this, a leader resumed in a cluster that had no other quorum (a voter
        down, the rest waiting for it) stepped down at once and forced an election. The
        fresh timeout is granted once per passed quorum check: a leader that keeps
        stalling (a stuck disk) and hears from nobody still steps down.
        """
        assert ticks >= 1, "catch up on at least one tick"
        if ticks <= max(2, self.config.election_ticks // 2):
            for k in range(ticks):
                self._tick(beat=k == ticks - 1)
            return
        self._now += ticks - 1
        if self._role is Role.LEADER:
            self._transferee = NONE
            if self._stall_excused:  # no quorum check passed since the last one: check now
                self._election_elapsed = self.config.election_ticks - 1
            else:
                self._stall_excused = True
                self._election_elapsed = 0
                for pr in self._prs.values():
                    pr.recent_active = False
            self._heartbeat_elapsed = self.config.heartbeat_ticks - 1
        self._tick(beat=True)

    def _tick_leader(self, beat: bool) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee != NONE:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self._transferee = NONE  # the transfer timed out
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self._term, NONE)
                return
            self._stall_excused = False
        if beat and self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()
            self._tick_snapshots()

    def _quorum_active(self) -> bool:
        active = 0
        for node in self.membership.voters:
            pr = self._prs.get(node)
            if node == self._id or (pr is not None and pr.recent_active):
                active += 1
        for pr in self._prs.values():
            pr.recent_active = False
        return active >= self._quorum()

    def campaign(self) -> None:
        """Start an election now (bootstrap and tests). No-op for non-voters and leaders."""
        if self._role is Role.LEADER or not self._promotable():
            return
        self._start_election(transfer=False)

    def _start_election(self, transfer: bool) -> None:
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, pre_vote: bool, transfer: bool) -> None:
        term = self._term + 1 if pre_vote else self._term
        self._votes[self._id] = True
        if self._tally_votes(pre_vote):
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        for node in sorted(self.membership.voters):
            if node != self._id:
                self._msgs.append(
                    RequestVote(term, self._id, node, last, last_term, pre_vote, transfer)
                )

    def _tally_votes(self, pre_vote: bool) -> bool:
        """Count votes; move on a win or a loss. True if the election is decided."""
        voters = self.membership.voters
        granted = sum(1 for n, g in self._votes.items() if g and n in voters)
        rejected = sum(1 for n, g in self._votes.items() if not g and n in voters)
        if granted >= self._quorum():
            if pre_vote:
                self._become_candidate()
                self._request_votes(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if rejected >= self._quorum():
            self._become_follower(self._term, NONE)
            return True
        return False

    # ------------------------------------------------------------------ step
    def step(self, msg: Message) -> None:
        """Handle one message from a peer. Never raises on a bad or stale message."""
        if msg.to != self._id or msg.frm == self._id or not msg.frm:
            self.dropped += 1
            return
        if msg.term > self._term:
            if not self._step_higher_term(msg):
                return
        elif msg.term < self._term:
            self._step_lower_term(msg)
            return
        self._dispatch(msg)

    def _in_lease(self) -> bool:
        """Refuse votes within an election timeout of hearing a leader (§4.2.3), which
        leader leases rely on; a restart counts as having heard one (see __init__)."""
        return (
            self.config.check_quorum
            and (self._leader != NONE or self._restart_guard)
            and self._election_elapsed < self.config.election_ticks
        )

    def _step_higher_term(self, msg: Message) -> bool:
        """Adopt a newer term unless the message is a vote we must ignore."""
        if isinstance(msg, RequestVote):
            if self._in_lease() and not msg.transfer:
                self.dropped += 1
                return False
            if msg.pre_vote:
                return True
        if isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
            return True
        leader = msg.frm if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot) else NONE
        self._become_follower(msg.term, leader)
        return True

    def _step_lower_term(self, msg: Message) -> None:
        c = self.config
        if (c.check_quorum or c.pre_vote) and isinstance(msg, AppendEntries | Heartbeat):
            # tell a stale leader about the newer term so it steps down
            self._send(AppendResponse(self._term, self._id, msg.frm, 0))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(VoteResponse(self._term, self._id, msg.frm, False, pre_vote=True))
        else:
            self.dropped += 1

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, RequestVote):
            self._on_request_vote(msg)
        elif isinstance(msg, VoteResponse):
            self._on_vote_response(msg)
        elif isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow):
            self._on_leader_message(msg)
        elif self._role is not Role.LEADER or msg.frm not in self._prs:
            self.dropped += 1
        elif isinstance(msg, AppendResponse):
            self._on_append_response(msg)
        elif isinstance(msg, HeartbeatResponse):
            self._on_heartbeat_response(msg)
        elif isinstance(msg, SnapshotResponse):
            self._on_snapshot_response(msg)
        else:
            self.dropped += 1

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    # ------------------------------------------------------------------ votes
    def _on_request_vote(self, m: RequestVote) -> None:
        can_vote = not self._joining and (
            self._vote == m.frm
            or (self._vote == NONE and self._leader == NONE)
            or (m.pre_vote and m.term > self._term)
        )
        up_to_date = (m.last_term, m.last_index) >= (self.log.last_term(), self.log.last_index())
        if can_vote and up_to_date:
            if not m.pre_vote:
                self._vote = m.frm
                self._reset_timeout()
            term = m.term if m.pre_vote else self._term
            self._send(VoteResponse(term, self._id, m.frm, True, m.pre_vote))
        else:
            self._send(VoteResponse(self._term, self._id, m.frm, False, m.pre_vote))

    def _on_vote_response(self, m: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if m.pre_vote else Role.CANDIDATE
        if self._role is not expected:
            self.dropped += 1
            return
        if m.pre_vote and m.granted and m.term != self._term + 1:
            self.dropped += 1
            return
        self._votes.setdefault(m.frm, m.granted)
        self._tally_votes(m.pre_vote)

    # ------------------------------------------------------------------ follower side
    def _on_leader_message(
        self, m: AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow
    ) -> None:
        if self._role is Role.LEADER:
            self.dropped += 1  # two leaders in one term: impossible unless a peer lies
            return
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, m.frm)
        self._leader = m.frm
        self._election_elapsed = 0
        if isinstance(m, AppendEntries):
            self._on_append(m)
        elif isinstance(m, Heartbeat):
            last = self.log.last_index()
            self._commit_to(min(m.commit, last))
            self._send(HeartbeatResponse(self._term, self._id, m.frm, m.ctx))
            if m.commit > last and self.log.snapshot is None and self._snap_verifying is None:
                # the leader counts entries we no longer have (an operator repaired our
                # log): say where our log really ends. index=0 is never a normal reject.
                self._send(AppendResponse(self._term, self._id, m.frm, 0, True, 0, last + 1))
        elif isinstance(m, InstallSnapshot):
            self._on_install_snapshot(m)
        elif self._promotable():
            self._start_election(transfer=True)

    def _commit_to(self, index: int) -> None:
        if index > self._commit:
            self._commit = index
            self._prune_configs()

    def _on_append(self, m: AppendEntries) -> None:
        if self.log.snapshot is not None or self._snap_verifying is not None:
            self.dropped += 1  # appends wait until the snapshot is durable; the leader resends
            return
        if m.prev_index < self._commit:
            self._send(AppendResponse(self._term, self._id, m.frm, self._commit))
            return
        t = self.log.term(m.prev_index)
        if t is None or t != m.prev_term:
            self._reject_append(m, t)
            return
        ents = m.entries
        for i, e in enumerate(ents):
            if e.index != m.prev_index + 1 + i or e.term < m.prev_term or e.term > m.term:
                self.dropped += 1  # malformed batch
                return
        new = self._find_new(ents)
        if new is None:
            return
        if new:
            self._append_follower(new)
        last_new = m.prev_index + len(ents)
        self._commit_to(min(m.commit, last_new))
        self._send(AppendResponse(self._term, self._id, m.frm, last_new))

    def _find_new(self, ents: tuple[Entry, ...]) -> list[Entry] | None:
        """The suffix of ``ents`` not already in the log; None if the batch is bad."""
        last = self.log.last_index()
        for i, e in enumerate(ents):
            if e.index > last or self.log.term(e.index) != e.term:
                if e.index <= self._commit:
                    self.dropped += 1  # would overwrite a committed entry
                    return None
                return list(ents[i:])
        return []

    def _reject_append(self, m: AppendEntries, t: int | None) -> None:
        last = self.log.last_index()
        if m.prev_index > last or t is None:
            hint_term, hint_index = 0, min(last + 1, m.prev_index)
        else:
            hint_term = t
            hint_index = self._first_index_of_term(t, m.prev_index)
        self._send(
            AppendResponse(
                self._term, self._id, m.frm, m.prev_index, True, hint_term, max(hint_index, 1)
            )
        )

    def _first_index_of_term(self, t: int, hi: int) -> int:
        """Smallest index in (commit, hi] whose term is >= t (terms never decrease)."""
        lo = max(self._commit + 1, self.log.first_index())
        while lo < hi:
            mid = (lo + hi) // 2
            mt = self.log.term(mid)
            if mt is not None and mt >= t:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def _append_follower(self, ents: list[Entry]) -> None:
        configs: list[tuple[int, Membership]] = []
        config = EntryType.CONFIG  # a local: an enum member lookup costs ~0.2 us in 3.11
        for e in ents:
            if e.type == config:
                try:
                    configs.append((e.index, Membership.decode(e.data)))
                except (ValueError, TypeError):
                    self.dropped += 1
                    return
        first = ents[0].index
        while len(self._configs) > 1 and self._configs[-1][0] >= first:
            self._configs.pop()
        self.log.append(ents)
        self._configs.extend(configs)

    # ------------------------------------------------------------------ snapshots, follower
    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self._commit or self.log.term(meta.index) == meta.term:
            # we hold the snapshot's entries already: never wipe entries we acknowledged
            self._commit_to(meta.index)
            self._snap_recv = None
            self._send(SnapshotResponse(self._term, self._id, m.frm, meta.index, meta.size, True))
            return
        recv = self._snap_recv
        # the same transfer only if the same bytes: another leader's snapshot at the same
        # index and term may differ (snapshot() output need not be identical everywhere)
        if recv is None or _snapshot_id(recv[0]) != _snapshot_id(meta):
            if m.offset != 0:
                self._send(SnapshotResponse(self._term, self._id, m.frm, meta.index, 0))
                return
            recv = (meta, 0, m.frm)
        held = recv[1]
        if m.offset != held or self._snap_verifying is not None:
            self._send(SnapshotResponse(self._term, self._id, m.frm, meta.index, held))
            return
        held += len(m.data)
        if m.done and held != meta.size:
            self.dropped += 1  # sizes disagree: start over
            self._snap_recv = None
            self._send(SnapshotResponse(self._term, self._id, m.frm, meta.index, 0, reject=True))
            return
        self._snap_recv = (meta, held, m.frm)
        self._chunks.append(SnapshotChunk(meta, m.offset, m.data, m.done))
        if m.done:
            self._snap_verifying = meta
        self._send(SnapshotResponse(self._term, self._id, m.frm, meta.index, held))

    def snapshot_failed(self, meta: SnapshotMeta) -> None:
        """The driver found the assembled snapshot corrupt: drop it, make the leader restart."""
        v = self._snap_verifying
        if v is None or (v.index, v.term) != (meta.index, meta.term):
            self.dropped += 1
            return
        self._snap_verifying = None
        recv = self._snap_recv
        self._snap_recv = None
        to = recv[2] if recv is not None else self._leader
        if to != NONE:
            self._send(SnapshotResponse(self._term, self._id, to, meta.index, 0, reject=True))

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Called once the driver staged the final chunk durably and verified it."""
        recv = self._snap_recv
        self._snap_recv = None
        to = recv[2] if recv is not None else self._leader
        if self.log.term(meta.index) == meta.term:
            self._commit_to(meta.index)
        elif meta.index > self._commit:
            self.log.restore(meta)
            self._commit = self._apply_handed = meta.index
            self._configs = [(meta.index, meta.membership)]
        if to != NONE:
            self._send(SnapshotResponse(self._term, self._id, to, meta.index, meta.size, True))

    # ------------------------------------------------------------------ leader: proposals
    def _append_local(self, items: Sequence[tuple[EntryType, bytes]]) -> int:
        """Append entries in the current term; returns the first index."""
        first = self.log.last_index() + 1
        ents = [Entry(self._term, first + i, t, d) for i, (t, d) in enumerate(items)]
        size = 0
        config = EntryType.CONFIG  # a local: an enum member lookup costs ~0.2 us in 3.11
        for e in ents:
            size += len(e.data)
            if e.type == config:
                self._configs.append((e.index, Membership.decode(e.data)))
                self._sync_progress()
        self.log.append(ents)
        self._uncommitted.append((ents[-1].index, size))
        self._uncommitted_bytes += size
        return first

    def _check_can_propose(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if self._transferee != NONE:
            raise ProposalDropped("leader transfer in progress")

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append NORMAL entries as one batch; returns (term, index of the first)."""
        if not datas:
            raise ValueError("propose at least one command")
        self._check_can_propose()
        size = sum(len(d) for d in datas)
        if self._uncommitted_bytes and self._uncommitted_bytes + size > (
            self.config.max_uncommitted_bytes
        ):
            raise ProposalDropped("too many uncommitted bytes")
        first = self._append_local([(EntryType.NORMAL, bytes(d)) for d in datas])
        self._bcast_append()
        return self._term, first

    def propose_membership(self, new: Membership) -> tuple[int, int]:
        """Propose a single-server change (dissertation §4.1)."""
        self._check_can_propose()
        if self._configs[-1][0] > self._commit or self.log.term(self._commit) != self._term:
            raise ChangeInProgress("the previous change (or this term's no-op) is uncommitted")
        old = self.membership
        if not new.voters:
            raise ValueError("a membership needs at least one voter")
        if len(old.voters.keys() ^ new.voters.keys()) > 1:
            raise ValueError("change at most one voter at a time")
        first = self._append_local([(EntryType.CONFIG, new.encode())])
        self._bcast_append()
        return self._term, first

    def _sync_progress(self) -> None:
        """Make the progress map follow the newest membership (leader only)."""
        if self._role is not Role.LEADER:
            return
        ids = sorted(self.membership.ids() | {self._id})
        for node in list(self._prs):
            if node not in ids:
                del self._prs[node]
        for node in ids:
            if node not in self._prs:
                self._prs[node] = Progress(self.log.last_index() + 1)
        if self._transferee not in self.membership.voters:
            self._transferee = NONE

    # ------------------------------------------------------------------ leader: replication
    def _bcast_append(self) -> None:
        for node, pr in self._prs.items():
            if node != self._id:
                self._send_append(node, pr, allow_empty=False)

    def _send_append(self, to: NodeId, pr: Progress, allow_empty: bool) -> None:
        if pr.state is ProgressState.SNAPSHOT:
            self._send_snapshot(to, pr)
            return
        if pr.paused(self.config.max_inflight_msgs):
            return
        last = self.log.last_index()
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._start_snapshot(to, pr)
            return
        ents: list[Entry] = []
        if pr.next <= last:
            hi = min(last + 1, pr.next + self.config.max_msg_entries)
            try:
                ents = self.log.entries(pr.next, hi, self.config.max_msg_bytes)
            except Compacted:
                self._start_snapshot(to, pr)
                return
        elif not allow_empty:
            return
        self._send(
            AppendEntries(self._term, self._id, to, prev, prev_term, tuple(ents), self._commit)
        )
        if pr.state is ProgressState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.probe_sent = True

    def _on_append_response(self, m: AppendResponse) -> None:
        pr = self._prs[m.frm]
        pr.recent_active = True
        if m.reject:
            self._on_append_reject(m, pr)
            return
        if m.index > self.log.last_index() or m.index == 0:
            # index 0 acks nothing (a leader's log starts with its no-op): it is a newer
            # term's notice (_step_lower_term) that outlived the term it answered
            self.dropped += 1
            return
        was_probe = pr.state is ProgressState.PROBE
        if not pr.ack(m.index):
            if was_probe and m.index == pr.match:
                pr.become_replicate()  # caught up by a snapshot: maybe a transfer's target
                self._maybe_send_timeout_now(m.frm, pr)
            return
        if pr.state is ProgressState.SNAPSHOT:
            assert pr.snap_meta is not None
            if pr.match >= pr.snap_meta.index:
                pr.become_probe(pr.match + 1)
        elif was_probe:
            pr.become_replicate()
        if self._maybe_commit():
            pass
        if self._role is not Role.LEADER:
            return
        self._maybe_send_timeout_now(m.frm, pr)
        self._send_append(m.frm, pr, allow_empty=False)

    def _maybe_send_timeout_now(self, peer: NodeId, pr: Progress) -> None:
        """A transfer's target that now holds our whole log may start its election."""
        if peer == self._transferee and pr.match == self.log.last_index():
            self._send_timeout_now(peer)

    def _on_append_reject(self, m: AppendResponse, pr: Progress) -> None:
        if m.index == 0:
            self._on_entries_lost(m, pr)
            return
        if pr.state is ProgressState.REPLICATE and m.index <= pr.match:
            return  # stale
        if pr.state is ProgressState.PROBE and m.index != pr.next - 1:
            return  # stale
        if pr.state is ProgressState.SNAPSHOT:
            return
        nxt = self._next_from_hint(m)
        nxt = max(pr.match + 1, min(nxt, m.index, self.log.last_index() + 1))
        pr.become_probe(nxt)
        self._send_append(m.frm, pr, allow_empty=True)

    def _on_entries_lost(self, m: AppendResponse, pr: Progress) -> None:
        """A follower's log ends below what it acknowledged (repaired after disk damage).

        Raft assumes acknowledged entries are never lost; when an operator discards a
        damaged suffix, the leader must stop counting them and send them again.
        """
        follower_last = m.hint_index - 1
        if pr.state is ProgressState.SNAPSHOT or follower_last >= pr.match:
            return  # stale, or nothing we relied on is missing
        self.lost_reports += 1
        pr.forget_match(max(0, follower_last))
        self._send_append(m.frm, pr, allow_empty=True)

    def _next_from_hint(self, m: AppendResponse) -> int:
        """Fast backtracking: skip the follower's whole conflicting term in one step."""
        if m.hint_term == 0:
            return m.hint_index
        lo = self.log.first_index() - 1
        hi = min(m.index, self.log.last_index())
        if hi < lo:
            return m.hint_index
        # largest i in [lo, hi] with term(i) <= hint_term (terms never decrease)
        if (self.log.term(lo) or 0) > m.hint_term:
            return m.hint_index
        while lo < hi:
            mid = (lo + hi + 1) // 2
            t = self.log.term(mid)
            if t is not None and t <= m.hint_term:
                lo = mid
            else:
                hi = mid - 1
        if self.log.term(lo) == m.hint_term:
            return lo + 1
        return m.hint_index

    def _maybe_commit(self) -> bool:
        """Commit the quorum-replicated index if it is in the current term (§5.4.2)."""
        voters = self.membership.voters
        if not voters:
            return False
        matches = sorted((self._prs[v].match for v in voters if v in self._prs), reverse=True)
        q = self._quorum()
        if len(matches) < q:
            return False
        idx = matches[q - 1]
        if idx <= self._commit or self.log.term(idx) != self._term:
            return False
        self._commit = idx
        while self._uncommitted and self._uncommitted[0][0] <= idx:
            self._uncommitted_bytes -= self._uncommitted.popleft()[1]
        self._prune_configs()
        self._release_waiting_reads()
        if self._id not in voters and self._configs[-1][0] <= idx:
            # we removed ourselves and the change is committed: stop leading
            self._become_follower(self._term, NONE)
        return True

    def _prune_configs(self) -> None:
        """Forget configs that can no longer be truncated (keep the newest committed one)."""
        c = self._configs
        k = 0
        while k + 1 < len(c) and c[k + 1][0] <= self._commit:
            k += 1
        if k:
            del c[:k]

    # ------------------------------------------------------------------ leader: heartbeats, reads
    def _bcast_heartbeat(self) -> None:
        self._round += 1
        self._round_ticks[self._round] = self._now
        self._round_ticks.pop(self._round - MAX_ROUNDS_REMEMBERED, None)
        ctx = _round_ctx(self._round)
        for node, pr in self._prs.items():
            if node != self._id:
                commit = min(pr.match, self._commit)
                self._send(Heartbeat(self._term, self._id, node, commit, ctx))
        self._read_round_needed = False

    def _stall_rounds(self) -> int:
        """Heartbeat rounds without progress before the leader assumes an append was lost.

        The transport is ordered and reliable while a connection lives, so a loss is
        rare; a busy follower that takes longer than one round per batch is common under
        load. One round (the old rule) made the leader resend, from disk, entries that
        were still in flight: more work for both, so more stalls. Half an election
        timeout instead."""
        return max(2, self.config.election_ticks // (2 * self.config.heartbeat_ticks))

    def _on_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self._prs[m.frm]
        pr.recent_active = True
        pr.probe_sent = False
        if len(m.ctx) == 8:
            r = int.from_bytes(m.ctx, "big")
            tick = self._round_ticks.get(r)
            if tick is not None and tick > pr.ack_tick:
                pr.ack_tick = tick
            self._ack_reads(m.frm, r)
        if pr.state is ProgressState.REPLICATE:
            if pr.match < self.log.last_index() and pr.match == pr.hb_match:
                pr.stalled_rounds += 1
                if pr.stalled_rounds >= self._stall_rounds():
                    pr.become_probe(pr.match + 1)  # no progress for a while: an append was lost
            else:
                pr.stalled_rounds = 0
            pr.hb_match = pr.match
        if pr.match < self.log.last_index() and pr.state is ProgressState.PROBE:
            self._send_append(m.frm, pr, allow_empty=True)

    def read_index(self, ctx: bytes, *, lease: bool = True) -> None:
        """Request a linearizable read; the answer comes as a Ready.read_states entry.

        ``lease=False`` always confirms leadership with a quorum round, even when the
        config enables lease reads (the caller asked for the stronger guarantee).
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if len(self._reads) + len(self._reads_waiting) >= MAX_PENDING_READS:
            raise ProposalDropped("too many pending reads")
        if self.log.term(self._commit) != self._term:
            self._reads_waiting.append((ctx, lease))
            return
        self._start_read(ctx, lease)

    def _start_read(self, ctx: bytes, lease: bool) -> None:
        single = len(self.membership.voters) == 1 and self._is_voter()
        if single or (lease and self._lease_valid()):
            self._read_states.append(ReadState(ctx, self._commit))
        else:
            self._reads.append(_PendingRead(ctx, self._commit, self._round + 1, set()))
            self._read_round_needed = True

    def _lease_valid(self) -> bool:
        c = self.config
        if not (c.lease_reads and c.check_quorum and self._lease_ok_in_term):
            return False
        if self._transferee != NONE or not self._is_voter():
            return False
        ticks = sorted(
            (self._now if v == self._id else self._prs[v].ack_tick)
            for v in self.membership.voters
            if v in self._prs
        )
        ticks.reverse()
        q = self._quorum()
        if len(ticks) < q:
            return False
        margin = max(1, c.election_ticks // 5)
        return ticks[q - 1] > self._now - (c.election_ticks - margin)

    def _release_waiting_reads(self) -> None:
        if self._reads_waiting and self.log.term(self._commit) == self._term:
            waiting = list(self._reads_waiting)
            self._reads_waiting.clear()
            for ctx, lease in waiting:
                self._start_read(ctx, lease)

    def _ack_reads(self, node: NodeId, r: int) -> None:
        if not self._reads or node not in self.membership.voters:
            return
        q = self._quorum()
        self_vote = 1 if self._is_voter() else 0
        last_ok = -1
        for i, req in enumerate(self._reads):
            if req.round > r:
                break
            req.acks.add(node)
            if len(req.acks) + self_vote >= q:
                last_ok = i
        for _ in range(last_ok + 1):
            req = self._reads.popleft()
            self._read_states.append(ReadState(req.ctx, req.index))

    # ------------------------------------------------------------------ leader: transfer
    def transfer_leader(self, target: NodeId) -> None:
        """Hand leadership to ``target`` once it is caught up (dissertation §3.10)."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if target not in self.membership.voters:
            raise ValueError(f"{target!r} is not a voter")
        if target == self._id or target == self._transferee:
            return
        self._transferee = target
        # one election timeout, on a clock of its own: restarting the quorum check's
        # instead let repeated transfer requests keep a cut-off leader leading
        self._transfer_elapsed = 0
        pr = self._prs[target]
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target, pr, allow_empty=False)

    def _send_timeout_now(self, target: NodeId) -> None:
        self._lease_ok_in_term = False  # the target's votes bypass follower leases
        self._send(TimeoutNow(self._term, self._id, target))

    # ------------------------------------------------------------------ leader: snapshots
    def _start_snapshot(self, to: NodeId, pr: Progress) -> None:
        meta = self.storage.snapshot_meta()
        if meta is None:
            return  # nothing to send yet; retried on the next heartbeat response
        pr.become_snapshot(meta)
        self._send_snapshot(to, pr)

    def _send_snapshot(self, to: NodeId, pr: Progress) -> None:
        """Send the next chunks of the follower's snapshot, a window at a time.

        A transfer under way keeps its snapshot while the driver keeps it: switching to
        every newer one restarted the transfer each time, and a follower whose transfer
        took longer than the interval between snapshots never finished one.
        """
        meta = pr.snap_meta
        assert meta is not None
        current = self.storage.snapshot_meta()
        if current is not None and current != meta and pr.snap_sent == 0:
            pr.become_snapshot(current)  # not begun: send the newest (or its replacement)
            meta = current
        chunk = self.config.snapshot_chunk_bytes
        window = SNAPSHOT_WINDOW_CHUNKS * chunk
        while not pr.snap_done_sent and pr.snap_sent - pr.snap_acked < window:
            data = b""
            if pr.snap_sent < meta.size:
                try:
                    data = self.storage.snapshot_chunk(meta.index, pr.snap_sent, chunk)
                except Compacted:  # pruned under way, or set aside as damaged
                    current = self.storage.snapshot_meta()
                    if current is None or current == meta:
                        # nothing else to send (the driver writes a new one): try again
                        # at the next heartbeat, as after a follower's reject
                        pr.snap_sent = pr.snap_acked = 0
                        pr.snap_done_sent, pr.snap_progress = True, False
                        return
                    pr.become_snapshot(current)  # start over with the newest
                    self._send_snapshot(to, pr)
                    return
                assert data, "storage returned no snapshot bytes"
            done = pr.snap_sent + len(data) >= meta.size
            self._send(InstallSnapshot(self._term, self._id, to, meta, pr.snap_sent, data, done))
            pr.snap_sent += len(data)
            pr.snap_done_sent = done

    def _on_snapshot_response(self, m: SnapshotResponse) -> None:
        pr = self._prs[m.frm]
        pr.recent_active = True
        meta = pr.snap_meta
        if pr.state is not ProgressState.SNAPSHOT or meta is None or m.index != meta.index:
            self.dropped += 1
            return
        if m.done:
            pr.match = max(pr.match, meta.index)
            pr.become_probe(pr.match + 1)
            self._send_append(m.frm, pr, allow_empty=True)
            return
        if m.reject:
            # start over from 0, but at the next heartbeat: no hot retry loop
            pr.snap_sent = pr.snap_acked = 0
            pr.snap_done_sent = True
            pr.snap_progress = False
            return
        if m.offset < pr.snap_acked:
            # stale (reordered) or the follower lost bytes: decide at the stall check
            pr.snap_low = min(pr.snap_low, m.offset)
            return
        if m.offset > pr.snap_acked:
            pr.snap_acked = min(m.offset, meta.size)
            pr.snap_sent = max(pr.snap_sent, pr.snap_acked)
            pr.snap_progress = True
        self._send_snapshot(m.frm, pr)

    def _tick_snapshots(self) -> None:
        """Resend from the last acked offset when a transfer made no progress for a beat."""
        for node, pr in self._prs.items():
            if pr.state is not ProgressState.SNAPSHOT or node == self._id:
                continue
            if not pr.snap_progress:
                assert pr.snap_meta is not None
                size = pr.snap_meta.size
                chunk = self.config.snapshot_chunk_bytes
                acked = min(pr.snap_acked, pr.snap_low)
                resume = acked if acked < size else ((size - 1) // chunk) * chunk
                pr.snap_sent = pr.snap_acked = max(0, resume)
                pr.snap_done_sent = False
                self._send_snapshot(node, pr)
            pr.snap_progress = False
            pr.snap_low = 1 << 62

    # ------------------------------------------------------------------ Ready / advance
    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        return bool(
            self._msgs
            or self._chunks
            or self._read_states
            or self._read_round_needed
            or self.log.has_unhanded()
            or (self.log.snapshot is not None and not self.log.snapshot_handed)
            or self._commit > self._apply_handed
            or self._hard_state_changed()
            or self._soft_state_changed()
        )

    # field by field: has_ready() runs every reactor turn, and building two frozen
    # dataclasses to compare them cost more than the rest of it
    def _hard_state_changed(self) -> bool:
        hs = self._prev_hs
        return self._term != hs.term or self._vote != hs.vote

    def _soft_state_changed(self) -> bool:
        ss = self._prev_soft
        return self._role is not ss.role or self._leader != ss.leader or self._term != ss.term

    def ready(self) -> Ready:
        """The next batch of work. Call advance() with it before the next ready()."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called twice without advance()")
        if self._read_round_needed and self._role is Role.LEADER:
            self._bcast_heartbeat()
        rd = Ready()
        if self._soft_state_changed():
            rd.soft_state = self._prev_soft = SoftState(self._role, self._leader, self._term)
        if self._hard_state_changed():
            rd.hard_state = self._prev_hs = HardState(self._term, self._vote)
        if self.log.snapshot is not None and not self.log.snapshot_handed:
            rd.snapshot = self.log.snapshot
            self.log.snapshot_handed = True
        rd.entries = self.log.take_unhanded()
        rd.snapshot_chunks, self._chunks = self._chunks, []
        rd.messages, self._msgs = self._msgs, []
        if self._commit > self._apply_handed:
            lo = self._apply_handed + 1
            hi = min(self._commit + 1, lo + self.config.max_apply_entries)
            ents = self.log.entries(lo, hi, self.config.max_msg_bytes)
            rd.committed_entries = ents
            self._apply_handed = ents[-1].index
        rd.read_states, self._read_states = self._read_states, []
        self._outstanding = rd
        return rd

    def advance(self, ready: Ready, synced: bool = True) -> None:
        """The driver persisted, sent and applied everything in ``ready``.

        A leader's driver may pass ``synced=False`` after only writing the entries
        (not yet durable) and call :meth:`log_synced` once they are: the leader then
        counts its own copy only from that point (dissertation 10.2.1). Term and
        vote changes and snapshots are always durable before advance.
        """
        if ready is not self._outstanding:
            raise RuntimeError("advance() with a Ready that was not handed out")
        if not synced and (
            self._role is not Role.LEADER
            or ready.hard_state is not None
            or ready.snapshot is not None
        ):
            raise RuntimeError("only a leader's entries may be written before they are durable")
        self._outstanding = None
        if ready.snapshot is not None:
            self.log.snapshot_persisted(ready.snapshot)
            self._applied = max(self._applied, ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            self.log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self._applied = max(self._applied, ready.committed_entries[-1].index)
        self._maybe_end_join()
        if any(c.done for c in ready.snapshot_chunks):
            v = self._snap_verifying
            self._snap_verifying = None
            if v is not None:
                self._install_snapshot(v)
        if self._role is Role.LEADER and ready.entries and synced:
            self.log_synced(self.log.stable_index())

    def log_synced(self, index: int) -> None:
        """The driver's log is durable through ``index``: a leader counts its own copy.

        Any index the storage reports is fine, stale or not: the leader never
        truncates its log, and it starts leading with its whole log durable.
        """
        if self._role is not Role.LEADER:
            return
        me = self._prs[self._id]
        index = min(index, self.log.stable_index())
        if index > me.match:
            me.match = index
            self._maybe_commit()
