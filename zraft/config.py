"""Node configuration: every option with its default and unit, validated up front.

A wrong config is the operator's fault, so it fails at construction with a
:class:`~zraft.errors.ConfigError` naming the option, never later in the reactor.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zraft.errors import ConfigError
from zraft.sessions import MAX_SESSION_WINDOW, MAX_SESSIONS
from zraft.storage.storage import MAX_KEEP_SNAPSHOTS, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES

MIN_FRAME_BYTES = 1 << 16  #: below this even a modest command would not fit a frame
#: limits on the rest: beyond them a timer overflows or storage refuses at open
UPPER_BOUNDS = {
    "tick_ms": 60_000,
    "election_ticks": 10_000,
    "keep_snapshots": MAX_KEEP_SNAPSHOTS,
    "max_inflight_msgs": 4096,
    "request_timeout_ms": 86_400_000,
    "slow_turn_ms": 86_400_000,
}
ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"  # 1-65535
#: an address: at most 1024 characters (the codec's limit for a member's address)
ADDR_RE = re.compile(rf"^(?=.{{1,1024}}$)(tcp://[^\s]+:{_PORT}|ipc://\S+|inproc://\S+)$")


@dataclass
class Config:
    """Everything a node needs. Times are in ms, sizes in bytes, counts in entries."""

    node_id: str
    bind: str
    data_dir: str
    #: The whole cluster (including this node) used to bootstrap a brand-new cluster.
    #: Ignored (with a log line) when the data dir already holds state. Empty with ``join``.
    peers: dict[str, str] = field(default_factory=dict)
    #: Endpoint(s) of a running cluster (comma-separated) to ask for membership when the
    #: data dir is empty.
    join: str | None = None
    #: Address other nodes use to reach this one (default: ``bind``).
    advertise: str | None = None
    cluster_id: str = "zraft"
    tick_ms: int = 50
    election_ticks: int = 10  #: election timeout: random in [10, 20) ticks = 500-1000 ms by default
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    #: "always": nothing is acknowledged before it is fsynced. "never": UNSAFE, loses
    #: acknowledged writes on power loss or a crash of several nodes; tests/benchmarks only.
    fsync: str = "always"
    segment_bytes: int = 64 << 20
    #: snapshot after N applied entries plus a random 0-25% (so nodes do not all snapshot
    #: at once); 0 = only manual
    snapshot_entries: int = 65536
    snapshot_trailing: int = 2048  #: entries kept below a snapshot for slow followers
    keep_snapshots: int = 2
    snapshot_chunk_bytes: int = 1 << 20
    #: a leader fsyncs its own appends on a helper thread, its reactor serving on meanwhile
    #: (off: it fsyncs inline, overlapping the followers' fsyncs all the same). Off by
    #: default: on our 2-core bench machine it cost ~10% of peak throughput.
    async_leader_flush: bool = False
    max_batch: int = 2048  #: client commands per log append (one fsync) and per reactor turn
    #: a turn that proposed and ran longer than this halves the next turns' batch (growing
    #: back while turns are short): heartbeats wait for a turn to end. None = 2/5 of
    #: the minimum election timeout (200 ms by default)
    max_turn_ms: int | None = None
    max_pending: int = 20000  #: in-flight commands before callers get BusyError
    max_msg_bytes: int = 1 << 20  #: entry bytes per AppendEntries
    max_inflight_msgs: int = 64  #: pipelined AppendEntries per follower
    max_frame_bytes: int = 64 << 20  #: largest inbound ZeroMQ frame
    request_timeout_ms: int = 10_000
    #: a reactor turn longer than this is logged ("slow_turn", with where the time went)
    slow_turn_ms: int = 200
    session_window: int = 256  #: remembered results per client session (exactly-once)
    max_sessions: int = 10_000
    curve_keys: str | None = None  #: directory of CURVE keys; None = no security
    seed: int | None = None  #: election randomness; None = derived from node id and time

    @property
    def address(self) -> str:
        return self.advertise or self.bind

    @property
    def turn_budget_ms(self) -> int:
        """``max_turn_ms``, or its default: 2/5 of the minimum election timeout."""
        if self.max_turn_ms is not None:
            return self.max_turn_ms
        return max(1, self.tick_ms * self.election_ticks * 2 // 5)

    def validate(self) -> Config:
        """Raise ConfigError naming the first wrong option."""
        self._check_types()
        if not ID_RE.match(self.node_id or ""):
            raise ConfigError(f"node_id {self.node_id!r}: use 1-64 chars of [A-Za-z0-9_.-]")
        for name, addr in (("bind", self.bind), ("advertise", self.advertise)):
            if addr is not None and not ADDR_RE.match(addr):
                raise ConfigError(f"{name} {addr!r}: expected e.g. tcp://127.0.0.1:7001")
        if not self.data_dir:
            raise ConfigError("data_dir is required")
        for pid, addr in self.peers.items():
            if not ID_RE.match(pid) or not ADDR_RE.match(addr):
                raise ConfigError(f"peers entry {pid}={addr!r} is not id=tcp://host:port")
        if self.peers and self.node_id not in self.peers:
            raise ConfigError(f"peers must include this node ({self.node_id})")
        if self.peers and self.join:
            raise ConfigError("give peers (bootstrap a new cluster) or join, not both")
        for endpoint in filter(None, (e.strip() for e in (self.join or "").split(","))):
            if not ADDR_RE.match(endpoint.partition("=")[2] or endpoint):
                raise ConfigError(f"join {endpoint!r}: expected e.g. tcp://127.0.0.1:7001")
        if self.fsync not in ("always", "never"):
            raise ConfigError(f"fsync {self.fsync!r}: 'always' or 'never'")
        if self.lease_reads and not self.check_quorum:
            raise ConfigError("lease_reads needs check_quorum")
        positive = (
            "tick_ms",
            "election_ticks",
            "heartbeat_ticks",
            "segment_bytes",
            "max_batch",
            "max_pending",
            "max_msg_bytes",
            "max_inflight_msgs",
            "request_timeout_ms",
            "slow_turn_ms",
            "session_window",
            "max_sessions",
            "snapshot_chunk_bytes",
            "keep_snapshots",
        )
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.session_window > MAX_SESSION_WINDOW:
            raise ConfigError(f"session_window must be <= {MAX_SESSION_WINDOW}")
        if self.max_sessions > MAX_SESSIONS:
            raise ConfigError(f"max_sessions must be <= {MAX_SESSIONS}")
        seen: dict[str, str] = {}
        for nid, addr in self.peers.items():
            if addr in seen:
                raise ConfigError(f"peers {seen[addr]} and {nid} share the address {addr}")
            seen[addr] = nid
        if self.heartbeat_ticks >= self.election_ticks:
            raise ConfigError("heartbeat_ticks must be smaller than election_ticks")
        if self.max_turn_ms is not None and self.max_turn_ms <= 0:
            raise ConfigError("max_turn_ms must be > 0 (or unset: 2/5 of the election timeout)")
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ConfigError(f"max_frame_bytes must be >= {MIN_FRAME_BYTES}")
        for name in ("max_msg_bytes", "snapshot_chunk_bytes"):  # the message around them
            if int(getattr(self, name)) > self.max_frame_bytes // 2:
                raise ConfigError(
                    f"{name} must be <= max_frame_bytes / 2 ({self.max_frame_bytes // 2}):"
                    " every larger message would be dropped and the follower never catch up"
                )
        for name, top in UPPER_BOUNDS.items():
            if int(getattr(self, name)) > top:
                raise ConfigError(f"{name} must be <= {top}")
        if not MIN_SEGMENT_BYTES <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ConfigError(f"segment_bytes must be in {MIN_SEGMENT_BYTES}..{MAX_SEGMENT_BYTES}")
        holder = next(
            (p for p, a in self.peers.items() if a == self.address and p != self.node_id), None
        )
        if holder is not None:
            raise ConfigError(f"this node's address {self.address} is peer {holder}'s")
        if self.snapshot_entries < 0 or self.snapshot_trailing < 0:
            raise ConfigError("snapshot_entries and snapshot_trailing must be >= 0")
        return self

    def _check_types(self) -> None:
        """Each option has its declared type: a TOML ``lease_reads = "false"`` is a
        (truthy) string, and ``tick_ms = 1.5`` a float; neither may pass silently."""
        hints = typing.get_type_hints(Config)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, hints[f.name]):
                raise ConfigError(
                    f"{f.name} = {value!r}: expected {_type_name(hints[f.name])},"
                    f" not {type(value).__name__}"
                )

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Config:
        """Load a ``zraft.toml`` (keys = field names; a [peers] table); overrides win."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        raw.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) in {path}: {', '.join(unknown)}")
        peers = raw.get("peers")
        if "bind" not in raw and isinstance(peers, dict) and raw.get("node_id") in peers:
            raw["bind"] = peers[raw["node_id"]]  # as --cluster does: listen where peers dial
        for name, flag in (("node_id", "--id"), ("bind", "--bind"), ("data_dir", "--data-dir")):
            if name not in raw:
                raise ConfigError(f"config {path}: no {name} (give it there or as {flag})")
        try:
            return cls(**raw).validate()
        except TypeError as exc:
            raise ConfigError(f"config {path}: {exc}") from exc


def _has_type(value: Any, hint: Any) -> bool:
    """isinstance for the few annotations Config uses (bool is not an int here)."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict) and all(
            type(k) is str and type(v) is str for k, v in value.items()
        )
    if hint is int:
        return type(value) is int
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return "a table of id = address"
    return "nothing" if hint is type(None) else str(hint.__name__)


def parse_cluster(spec: str) -> dict[str, str]:
    """Parse ``n1=tcp://127.0.0.1:7001,n2=...`` into a dict, with a clear error."""
    peers: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node_id, sep, addr = part.partition("=")
        if not sep or not node_id or not addr:
            raise ConfigError(f"cluster entry {part!r}: expected id=tcp://host:port")
        if node_id in peers:
            raise ConfigError(f"cluster names {node_id} twice")
        peers[node_id] = addr
    return peers
