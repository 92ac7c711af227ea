"""The vocabulary shared by every layer: entries, messages, hard state, Ready.

Everything here is plain data (stdlib only), so the core, storage, codec and
node all speak one language and the simulator can move messages around without
encoding them. Messages are frozen, slotted dataclasses: a message is a fact
that was sent, never something to mutate on the way.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

NodeId = str

#: The "no vote"/"no leader" marker. Node ids are non-empty strings.
NONE: NodeId = ""


class EntryType(enum.IntEnum):
    """What an entry's payload means to the node."""

    NORMAL = 0  #: opaque user command bytes, applied to the state machine
    NOOP = 1  #: empty entry a new leader appends in its term (Raft paper §5.4.2, Figure 8)
    CONFIG = 2  #: a full membership (see :class:`Membership`), in effect once appended


class Entry(NamedTuple):
    """One log entry. A tuple for speed: entries are created by the million.

    ``data`` stays ``bytes`` end to end: the core never looks inside a NORMAL
    entry, the storage writes it as is, and the codec ships it as is.
    """

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    type: EntryType
    data: bytes


@dataclass(frozen=True, slots=True)
class Membership:
    """The whole cluster configuration: voters and learners with addresses.

    A CONFIG entry carries a complete membership (not a delta), so applying one
    is a replacement and a node can always say who its peers are. At most one
    change between two committed memberships is in flight (single-server
    changes, Raft dissertation §4.1).
    """

    voters: dict[NodeId, str] = field(default_factory=dict)
    learners: dict[NodeId, str] = field(default_factory=dict)
    #: learners asked to become voters once caught up (sorted). In the configuration
    #: itself, so whichever node leads next still promotes them.
    promote: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        assert not (self.voters.keys() & self.learners.keys()), "a node is voter or learner"
        assert set(self.promote) <= self.learners.keys(), "only learners await promotion"
        assert list(self.promote) == sorted(set(self.promote)), "promote is sorted, unique"

    def ids(self) -> set[NodeId]:
        return set(self.voters) | set(self.learners)

    def address(self, node_id: NodeId) -> str | None:
        return self.voters.get(node_id) or self.learners.get(node_id)

    def with_changes(
        self,
        voters: dict[NodeId, str] | None = None,
        learners: dict[NodeId, str] | None = None,
        promote: set[NodeId] | None = None,
    ) -> Membership:
        """A copy with some parts replaced; pending promotions of departed learners drop."""
        learners = self.learners if learners is None else learners
        pending = set(self.promote) if promote is None else promote
        return Membership(
            voters=dict(self.voters if voters is None else voters),
            learners=dict(learners),
            promote=tuple(sorted(pending & learners.keys())),
        )

    def encode(self) -> bytes:
        """Stable bytes for a CONFIG entry or snapshot metadata (stdlib json)."""
        raw: dict[str, Any] = {"voters": self.voters, "learners": self.learners}
        if self.promote:  # absent when empty: configurations without it encode as before
            raw["promote"] = list(self.promote)
        return json.dumps(raw, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes) -> Membership:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("membership must be an object")
        voters = raw.get("voters", {})
        learners = raw.get("learners", {})
        for part in (voters, learners):
            if not isinstance(part, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in part.items()
            ):
                raise ValueError("membership maps node ids (str) to addresses (str)")
        promote = raw.get("promote", [])
        if not isinstance(promote, list) or not all(
            isinstance(p, str) and p in learners for p in promote
        ):
            raise ValueError("membership promote lists learners awaiting promotion")
        return Membership(
            voters=dict(voters), learners=dict(learners), promote=tuple(sorted(set(promote)))
        )


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves.

    Commit is deliberately not here: it is re-learned from the leader after a
    restart, so a commit advance costs no extra fsync.
    """

    term: int = 0
    vote: NodeId = NONE


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a snapshot: the last entry it covers, and the state's size/checksum."""

    index: int
    term: int
    membership: Membership
    size: int = 0  #: bytes of the state machine data
    crc32: int = 0  #: zlib.crc32 of the state machine data


# --------------------------------------------------------------------------- messages
# Every message has term, frm (sender id) and to (receiver id).


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after (prev_index, prev_term); §5.3."""

    term: int
    frm: NodeId
    to: NodeId
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader. On success ``index`` is the follower's last matched index.

    On reject ``index`` is the prev_index that did not match and
    (``hint_term``, ``hint_index``) is the fast-backtracking hint: the term of
    the follower's entry at that point (0 if it has none) and the first index
    the leader should probe next.
    """

    term: int
    frm: NodeId
    to: NodeId
    index: int
    reject: bool = False
    hint_term: int = 0
    hint_index: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate (or pre-candidate) -> voter; §5.2, §5.4.1; pre-vote per dissertation §9.6.

    For a pre-vote, ``term`` is the term the sender *would* campaign in.
    ``transfer`` marks a campaign started by TimeoutNow (leader transfer), which
    voters honour even while they still hear a leader.
    """

    term: int
    frm: NodeId
    to: NodeId
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    frm: NodeId
    to: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower. ``ctx`` non-empty marks a ReadIndex confirmation round."""

    term: int
    frm: NodeId
    to: NodeId
    commit: int
    ctx: bytes = b""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    frm: NodeId
    to: NodeId
    ctx: bytes = b""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: one chunk of a snapshot at byte ``offset``; dissertation §5."""

    term: int
    frm: NodeId
    to: NodeId
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """Follower -> leader: ``offset`` is how many bytes the follower now holds.

    ``done`` means the snapshot is installed; ``reject`` means the follower threw
    the transfer away (e.g. failed checksum) and the leader must restart at 0.
    """

    term: int
    frm: NodeId
    to: NodeId
    index: int  #: the snapshot's last index
    offset: int
    done: bool = False
    reject: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: campaign now, skipping pre-vote (§3.10 of the dissertation)."""

    term: int
    frm: NodeId
    to: NodeId


Message = (
    AppendEntries
    | AppendResponse
    | RequestVote
    | VoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)


# --------------------------------------------------------------------------- roles, ready


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts a driver reports as events; not persisted."""

    role: Role
    leader: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request is confirmed: serve it once applied >= index."""

    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A follower received snapshot bytes the driver must stage durably."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver (etcd's Ready). The contract, in order:

    1. Persist ``hard_state`` (if not None) and ``entries`` (an entry whose index
       is <= the stored last index replaces that suffix), and stage
       ``snapshot_chunks``; install ``snapshot`` if set (the log then restarts
       after ``snapshot.index``). All of it durable (one fsync) before step 2.
    2. Send ``messages``.
    3. Apply ``committed_entries`` in order; answer ``read_states`` once applied
       reaches their index.
    4. Call ``advance(ready)``.

    A leader's driver may write ``entries`` in step 1 without waiting for them to be
    durable (when ``hard_state`` and ``snapshot`` are None), call
    ``advance(ready, synced=False)``, and report the flush later with
    ``log_synced(index)``; the leader then counts its own copy only from there.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot_chunks
            or self.snapshot
            or self.messages
            or self.committed_entries
            or self.read_states
        )


# --------------------------------------------------------------------------- storage view


class LogStorage(Protocol):
    """The core's read-only view of durable state (etcd's Storage interface).

    Implemented by :class:`zraft.testing.memory.MemoryStorage` and by the disk
    log. The core only reads through it; the driver writes to it from Ready.
    Indexes are 1-based; index 0 / term 0 is the empty log's sentinel.
    """

    def initial_state(self) -> tuple[HardState, Membership]:
        """Hard state and the latest membership (from log, snapshot or bootstrap)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry available (snapshot.index + 1 after compaction)."""
        ...

    def last_index(self) -> int:
        """Index of the last stored entry (snapshot.index when the log is empty)."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index``; valid for snapshot.index..last_index.

        Raises :class:`Compacted` below that and :class:`Unavailable` above.
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries in [lo, hi), at least one if lo < hi, stopping once max_bytes is passed."""
        ...

    def snapshot_meta(self) -> SnapshotMeta | None:
        """The newest durable snapshot, or None."""
        ...

    def snapshot_chunk(self, index: int, offset: int, max_bytes: int) -> bytes:
        """Bytes [offset, offset+max_bytes) of the snapshot whose last index is ``index``;
        Compacted if that snapshot is gone (a newer one replaced it)."""
        ...


class Compacted(Exception):
    """The requested index lies inside the snapshot; the log no longer has it."""


class Unavailable(Exception):
    """The requested index is past the end of the log."""
