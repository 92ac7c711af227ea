"""What the leader knows about each follower: match/next and flow control."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from zraft.core.types import SnapshotMeta


class ProgressState(enum.Enum):
    """Probe: one append per round trip until we find the match point.
    Replicate: pipeline appends, bounded by the in-flight window.
    Snapshot: the follower needs a snapshot; appends are paused."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """A read-only copy of one follower's progress, for status()."""

    match: int
    next: int
    state: ProgressState


class Progress:
    __slots__ = (
        "ack_tick",
        "hb_match",
        "inflight",
        "match",
        "next",
        "probe_sent",
        "recent_active",
        "snap_acked",
        "snap_done_sent",
        "snap_low",
        "snap_meta",
        "snap_progress",
        "snap_sent",
        "stalled_rounds",
        "state",
    )

    def __init__(self, next_index: int, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        #: last index of each append in flight (replicate state), oldest first
        self.inflight: deque[int] = deque()
        self.recent_active = False
        #: send tick of the newest heartbeat round this peer acknowledged
        self.ack_tick = -(1 << 62)
        #: match seen at the previous heartbeat response (stall detection)
        self.hb_match = -1
        #: consecutive heartbeat rounds with no progress while behind (see Raft._stall_rounds)
        self.stalled_rounds = 0
        self.snap_meta: SnapshotMeta | None = None
        self.snap_sent = 0
        self.snap_acked = 0
        self.snap_done_sent = False
        self.snap_progress = False
        #: lowest offset the follower reported since the last stall check
        self.snap_low = 1 << 62

    def become_probe(self, next_index: int) -> None:
        assert next_index > self.match, "probe must start after the match point"
        self.state = ProgressState.PROBE
        self.next = next_index
        self.probe_sent = False
        self.inflight.clear()
        self.snap_meta = None
        self.stalled_rounds = 0

    def forget_match(self, match: int) -> None:
        """The follower lost entries it had acknowledged: probe again from its real end."""
        assert 0 <= match < self.match, "forget_match only lowers match"
        self.match = match
        self.hb_match = -1
        self.become_probe(match + 1)

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, meta: SnapshotMeta) -> None:
        self.state = ProgressState.SNAPSHOT
        self.inflight.clear()
        self.probe_sent = False
        self.snap_meta = meta
        self.snap_sent = 0
        self.snap_acked = 0
        self.snap_done_sent = False
        self.snap_progress = True
        self.snap_low = 1 << 62

    def paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def ack(self, index: int) -> bool:
        """A successful append response; True if it moved match forward."""
        self.probe_sent = False
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        return True

    def snapshot(self) -> PeerProgress:
        return PeerProgress(self.match, self.next, self.state)
