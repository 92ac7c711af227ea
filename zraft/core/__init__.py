"""The Raft algorithm as a pure, deterministic state machine (no I/O, no clocks, no threads)."""

from zraft.core.types import *  # noqa: F403
