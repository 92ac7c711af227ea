"""The Raft algorithm as a pure, deterministic state machine (no I/O, no clocks, no threads)."""

from zraft.core.progress import PeerProgress, ProgressState
from zraft.core.raft import (
    ChangeInProgress,
    CoreConfig,
    CoreStatus,
    NotLeader,
    ProposalDropped,
    Raft,
)
from zraft.core.types import *  # noqa: F403

__all__ = [
    "ChangeInProgress",
    "CoreConfig",
    "CoreStatus",
    "NotLeader",
    "PeerProgress",
    "ProgressState",
    "ProposalDropped",
    "Raft",
]
