"""A deterministic in-memory cluster of Raft cores over a fake clock (etcd's rafttest).

One tick is one unit of time. Every source of nondeterminism (message loss,
delay, reordering, duplication, partitions, crashes, snapshots) comes from one
``random.Random(seed)``, so a failing run is replayed exactly by its seed. The
driver here follows the Ready contract the way the real node does: persist,
send, apply, advance. Safety invariants are checked continuously and a
violation raises :class:`InvariantViolation` naming the seed and faults.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from zraft.core.raft import ChangeInProgress, CoreConfig, NotLeader, ProposalDropped, Raft
from zraft.core.types import (
    AppendResponse,
    Entry,
    EntryType,
    Membership,
    Message,
    NodeId,
    Ready,
    Role,
)
from zraft.testing.memory import MemoryStorage

#: Upper bound on delivery/ready rounds within one tick (a livelock is a bug).
MAX_SETTLE_ROUNDS = 10_000


class InvariantViolation(AssertionError):
    """A safety property failed; the message carries the seed to replay it."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault rates; probabilities are per message, or per node per tick."""

    loss: float = 0.0
    dup: float = 0.0
    delay_max_ticks: int = 0
    reorder: bool = False
    crash: float = 0.0  #: per node per tick
    crash_mid_ready: float = 0.0  #: per Ready: crash before persist or before send
    restart_after_ticks: int = 20  #: a crashed node restarts within this many ticks
    partition: float = 0.0  #: per tick: start a random partition
    partition_ticks: int = 30
    snapshot_every: int = 0  #: compact once this many entries are applied past the snapshot
    corrupt_snapshot: float = 0.0  #: per received snapshot: fail its checksum
    #: > 0: leaders write entries without waiting for the flush, which lands within this
    #: many ticks (the node's helper-thread fsync); a crash loses what it had not flushed
    leader_flush_ticks: int = 0
    #: per node per tick: stop the process (SIGSTOP), inbound held; a leader (and half
    #: the others) is also cut off until a while after it resumes
    pause: float = 0.0
    pause_ticks: int = 30  #: a paused node resumes within this many ticks

    def any(self) -> bool:
        return self != Faults()


def encode_state(payloads: list[bytes]) -> bytes:
    """The toy state machine's snapshot: length-prefixed payloads."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in payloads)


def decode_state(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


@dataclass
class SimNode:
    id: NodeId
    config: CoreConfig
    storage: MemoryStorage
    raft: Raft | None = None
    #: the state machine: every NORMAL payload applied, in order
    payloads: list[bytes] = field(default_factory=list)
    applied: int = 0
    last_commit: int = 0
    down_until: int = 0
    read_results: dict[bytes, int] = field(default_factory=dict)
    #: wiped and re-added: the durable "joining" marker a real node keeps (Raft.await_join)
    joining: bool = False
    join_index: int | None = None
    #: first index written but not yet flushed (leader_flush_ticks); None: all durable
    unflushed: int | None = None
    flush_at: int = 0  #: tick the running flush lands
    flush_upto: int = 0  #: what it covers
    #: tick the node was paused at (a stopped process: no ticks, no Readies, inbound
    #: held in its socket); None: running
    paused_at: int | None = None
    held: list[Message] = field(default_factory=list)
    resume_at: int = 0

    @property
    def running(self) -> bool:
        return self.raft is not None and self.paused_at is None

    @property
    def alive(self) -> bool:
        return self.raft is not None

    def core(self) -> Raft:
        assert self.raft is not None, f"{self.id} is down"
        return self.raft


class Cluster:
    """N nodes (voters, learners and spares outside the configuration) in one thread."""

    def __init__(
        self,
        voters: int = 3,
        *,
        learners: int = 0,
        spares: int = 0,
        seed: int = 0,
        faults: Faults | None = None,
        **config: Any,
    ) -> None:
        self.seed = seed
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.now = 0
        ids = [f"n{i + 1}" for i in range(voters + learners + spares)]
        membership = Membership(
            voters={i: f"addr-{i}" for i in ids[:voters]},
            learners={i: f"addr-{i}" for i in ids[voters : voters + learners]},
        )
        self.nodes: dict[NodeId, SimNode] = {}
        for i, nid in enumerate(ids):
            boot = membership if i < voters + learners else Membership()
            cfg = CoreConfig(node_id=nid, seed=seed, **config)
            node = SimNode(nid, cfg, MemoryStorage(boot))
            node.raft = Raft(cfg, node.storage)
            self.nodes[nid] = node
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._cut: set[tuple[NodeId, NodeId]] = set()
        self._link_loss: dict[tuple[NodeId, NodeId], float] = {}
        self._heal_at = 0
        #: scripted message filter: return False to drop a message at delivery
        self.msg_filter: Callable[[Message], bool] | None = None
        self.sent: Counter[str] = Counter()
        self.append_rejects = 0
        # global knowledge for the invariants
        self._leaders: dict[int, NodeId] = {}
        self._entries_seen: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self._applied: dict[int, Entry] = {}
        self.acked: dict[bytes, int] = {}  #: payload -> index, once any node applied it
        self._read_floor: dict[tuple[NodeId, bytes], int] = {}

    def fail(self, what: str) -> InvariantViolation:
        return InvariantViolation(f"{what} [seed={self.seed} faults={self.faults} now={self.now}]")

    # ------------------------------------------------------------------ scripted faults
    def isolate(self, node: NodeId) -> None:
        for other in self.nodes:
            if other != node:
                self.cut(node, other)

    def cut(self, a: NodeId, b: NodeId) -> None:
        self._cut.add((a, b))
        self._cut.add((b, a))

    def cut_one_way(self, frm: NodeId, to: NodeId) -> None:
        self._cut.add((frm, to))

    def drop(self, frm: NodeId, to: NodeId, prob: float) -> None:
        """Lose a fraction of the messages on one link."""
        self._link_loss[(frm, to)] = prob

    def heal(self) -> None:
        self._cut.clear()
        self._link_loss.clear()

    def crash(self, node: NodeId) -> None:
        """Lose everything not persisted: the core, its unstable state, its messages."""
        n = self.nodes[node]
        if n.raft is None:
            return
        if n.unflushed is not None:
            n.storage.lose_from(n.unflushed)
            n.unflushed = None
        n.raft = None
        n.paused_at, n.held = None, []
        self._queue = [q for q in self._queue if node not in (q[2].frm, q[2].to)]
        heapq.heapify(self._queue)

    def restart(self, node: NodeId) -> None:
        n = self.nodes[node]
        if n.raft is not None:
            return
        snap = n.storage.snapshot_meta()
        n.payloads = decode_state(n.storage.snapshot_data()) if snap else []
        n.applied = snap.index if snap else 0
        n.last_commit = n.applied
        n.raft = Raft(n.config, n.storage, applied=n.applied)
        if n.joining:
            n.raft.await_join(n.join_index)

    def wipe(self, node: NodeId) -> Raft:
        """Crash and lose the disk: the node comes back empty, as a re-provisioned machine
        does, and (like ``zraft run --join``) waits to be added before it may vote."""
        self.crash(node)
        n = self.nodes[node]
        n.storage = MemoryStorage(Membership())
        n.payloads, n.applied, n.last_commit = [], 0, 0
        n.read_results.clear()
        n.joining, n.join_index = True, None
        n.raft = Raft(n.config, n.storage)
        n.raft.await_join(None)
        return n.raft

    def joined(self, node: NodeId, index: int) -> None:
        """Tell a wiped node the index of the entry that added it back (add_member's answer)."""
        n = self.nodes[node]
        if n.joining:
            n.join_index = index
            if n.raft is not None:
                n.raft.await_join(index)

    def pause(self, node: NodeId, until: int | None = None) -> None:
        """Stop a node's process: it neither ticks nor steps; what it is sent waits.

        ``until``: the tick the fault injector resumes it at; None: only :meth:`resume`.
        """
        n = self.nodes[node]
        if n.running:
            n.paused_at = self.now
            n.resume_at = until if until is not None else 1 << 62

    def resume(self, node: NodeId) -> None:
        """Continue a paused node the way the real reactor does after a stall: step what
        queued up in its socket, then owe the core the ticks that passed. What queued had
        arrived: a partition made since does not take it back. (The real reactor reads a
        long queue over several turns; here it is all stepped first.)"""
        n = self.nodes[node]
        if n.raft is None or n.paused_at is None:
            return
        missed = self.now - n.paused_at
        held, n.held, n.paused_at = n.held, [], None
        for m in held:
            n.raft.step(m)
        if missed:
            n.raft.catch_up(missed)
        self.settle()

    # ------------------------------------------------------------------ queries
    def leader(self) -> NodeId | None:
        best: tuple[int, NodeId] | None = None
        for n in self.nodes.values():
            core = n.raft
            if not n.running or core is None or core.role is not Role.LEADER:
                continue  # a paused leader answers nobody
            if not best or core.term > best[0]:
                best = (core.term, n.id)
        return best[1] if best else None

    def core(self, node: NodeId) -> Raft:
        return self.nodes[node].core()

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    # ------------------------------------------------------------------ client actions
    def propose(self, data: bytes, node: NodeId | None = None) -> tuple[int, int] | None:
        node = node or self.leader()
        if node is None or not self.nodes[node].running:
            return None
        try:
            res = self.core(node).propose([data])
        except (NotLeader, ProposalDropped):
            return None
        self.settle()
        return res

    def read(self, ctx: bytes, node: NodeId | None = None) -> bool:
        """Issue a ReadIndex; the result lands in node.read_results[ctx]."""
        node = node or self.leader()
        if node is None or not self.nodes[node].running:
            return False
        try:
            self.core(node).read_index(ctx)
        except (NotLeader, ProposalDropped):
            return False
        self._read_floor[(node, ctx)] = max(self._applied, default=0)
        self.settle()
        return True

    # ------------------------------------------------------------------ time
    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.now += 1
            self._inject_faults()
            self._land_flushes()
            for node in self.alive():
                if node.running:
                    node.core().tick()
            self.settle()

    def run_until(self, pred: Any, max_ticks: int) -> bool:
        for _ in range(max_ticks):
            if pred():
                return True
            self.tick()
        return bool(pred())

    def wait_leader(self, max_ticks: int = 200) -> NodeId:
        assert self.run_until(lambda: self.leader() is not None, max_ticks), "no leader"
        lead = self.leader()
        assert lead is not None
        return lead

    def settle(self) -> None:
        """Deliver every due message and drain every Ready until nothing moves."""
        for _ in range(MAX_SETTLE_ROUNDS):
            moved = False
            for node in list(self.nodes.values()):
                while node.running and node.core().has_ready():
                    self._process_ready(node)
                    moved = True
            due: list[Message] = []
            while self._queue and self._queue[0][0] <= self.now:
                due.append(heapq.heappop(self._queue)[2])
            if self.faults.reorder:
                self.rng.shuffle(due)
            for m in due:
                self._deliver(m)
            if not moved and not due:
                self._check_all()
                return
        raise self.fail("settle did not converge")

    # ------------------------------------------------------------------ network
    def _send(self, m: Message) -> None:
        self.sent[type(m).__name__] += 1
        if isinstance(m, AppendResponse) and m.reject:
            self.append_rejects += 1
        f = self.faults
        if f.loss and self.rng.random() < f.loss:
            return
        copies = 2 if f.dup and self.rng.random() < f.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(0, f.delay_max_ticks) if f.delay_max_ticks else 0
            self._seq += 1
            heapq.heappush(self._queue, (self.now + delay, self._seq, m))

    def _deliver(self, m: Message) -> None:
        target = self.nodes.get(m.to)
        if target is None or target.raft is None or (m.frm, m.to) in self._cut:
            return
        if self.msg_filter is not None and not self.msg_filter(m):
            return
        loss = self._link_loss.get((m.frm, m.to), 0.0)
        if loss and self.rng.random() < loss:
            return
        if target.paused_at is not None:
            target.held.append(m)
            return
        target.raft.step(m)

    # ------------------------------------------------------------------ the driver
    def _process_ready(self, node: SimNode) -> None:
        core = node.core()
        rd = core.ready()
        f = self.faults
        # a leader may write its entries and flush them later (the node's early path)
        lazy = (
            f.leader_flush_ticks > 0
            and core.role is Role.LEADER
            and rd.hard_state is None
            and rd.snapshot is None
        )
        if f.crash_mid_ready and self.rng.random() < f.crash_mid_ready:
            if self.rng.random() < 0.5:
                self.crash(node.id)  # before persisting: the whole Ready is lost
                return
            self._write(node, rd, lazy)
            self.crash(node.id)  # persisted (or, lazily, only written), never sent
            return
        self._write(node, rd, lazy)
        for m in rd.messages:
            self._send(m)
        self._apply(node, rd)
        core.advance(rd, synced=not (lazy and rd.entries))
        if node.joining and not core.joining:
            node.joining = False  # the real node removes its marker here
        self._maybe_compact(node)

    def _write(self, node: SimNode, rd: Ready, lazy: bool) -> None:
        if not lazy:
            node.unflushed = None  # the real node's sync(): waits out and covers all writes
        self._persist(node, rd)
        if lazy and rd.entries:
            self._start_flush(node, rd.entries[0].index)

    def _start_flush(self, node: SimNode, first: int) -> None:
        if node.unflushed is None:
            node.unflushed = first
            node.flush_at = self.now + self.rng.randint(0, self.faults.leader_flush_ticks)
            node.flush_upto = node.storage.last_index()

    def _land_flushes(self) -> None:
        for node in self.alive():
            if node.unflushed is None or self.now < node.flush_at or not node.running:
                continue
            upto = node.flush_upto
            last = node.storage.last_index()
            node.unflushed = None
            if upto < last:  # written while it ran: the next flush takes them
                self._start_flush(node, upto + 1)
            node.core().log_synced(upto)

    def _persist(self, node: SimNode, rd: Ready) -> None:
        st = node.storage
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        if rd.entries:
            self._check_log_matching(node, rd.entries)
            st.append(rd.entries)
        for chunk in rd.snapshot_chunks:
            data = st.stage_chunk(chunk)
            if data is None:
                continue
            bad = self.faults.corrupt_snapshot and self.rng.random() < self.faults.corrupt_snapshot
            if bad or zlib.crc32(data) != chunk.meta.crc32:
                node.core().snapshot_failed(chunk.meta)
        if rd.snapshot is not None:
            data = st.staged_bytes(rd.snapshot)
            if data is None or zlib.crc32(data) != rd.snapshot.crc32:
                raise self.fail(f"{node.id}: snapshot installed without verified bytes")
            st.install_snapshot(rd.snapshot, data)
            node.payloads = decode_state(data)
            node.applied = rd.snapshot.index
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self._check_new_leader(node, rd.soft_state.term)

    def _apply(self, node: SimNode, rd: Ready) -> None:
        for e in rd.committed_entries:
            if e.index != node.applied + 1:
                raise self.fail(f"{node.id}: applied {e.index} after {node.applied}")
            seen = self._applied.get(e.index)
            if seen is None:
                self._applied[e.index] = e
                if e.type == EntryType.NORMAL:
                    self.acked[e.data] = e.index
            elif seen != e:
                raise self.fail(f"state machine safety: {node.id} applied {e} but saw {seen}")
            if e.type == EntryType.NORMAL:
                node.payloads.append(e.data)
            node.applied = e.index
        for rs in rd.read_states:
            floor = self._read_floor.pop((node.id, rs.ctx), 0)
            if rs.index < floor:
                raise self.fail(f"stale read on {node.id}: index {rs.index} < acked {floor}")
            node.read_results[rs.ctx] = rs.index

    def _maybe_compact(self, node: SimNode) -> None:
        every = self.faults.snapshot_every
        st = node.storage
        if every and node.applied - st.first_index() + 1 >= max(every, 1):
            st.create_snapshot(node.applied, encode_state(node.payloads))

    # ------------------------------------------------------------------ invariants
    def _check_log_matching(self, node: SimNode, ents: list[Entry]) -> None:
        """Same (index, term) means same entry and same predecessor term: log matching."""
        st = node.storage
        first = ents[0].index
        prev_term = st.term(first - 1)
        for e in ents:
            key = (e.index, e.term)
            val = (prev_term, int(e.type), e.data)
            seen = self._entries_seen.setdefault(key, val)
            if seen != val:
                raise self.fail(f"log matching: {node.id} has {e} after term {prev_term}")
            prev_term = e.term

    def _check_new_leader(self, node: SimNode, term: int) -> None:
        other = self._leaders.setdefault(term, node.id)
        if other != node.id:
            raise self.fail(f"election safety: {other} and {node.id} both lead term {term}")
        core = node.core()
        first = core.log.first_index()
        for idx, e in self._applied.items():
            if idx >= first and core.log.term(idx) != e.term:
                raise self.fail(f"leader completeness: {node.id} lacks committed {e}")

    def _check_all(self) -> None:
        for n in self.alive():
            core = n.core()
            if core.role is Role.LEADER:
                other = self._leaders.setdefault(core.term, n.id)
                if other != n.id:
                    raise self.fail(f"election safety: {other} and {n.id} lead {core.term}")
            if core.commit < n.last_commit:
                raise self.fail(f"{n.id}: commit went back {n.last_commit} -> {core.commit}")
            n.last_commit = core.commit

    def check_final(self) -> None:
        """Every acknowledged value is in every up-to-date state machine, in one order."""
        order = [self._applied[i] for i in sorted(self._applied)]
        expected = [e.data for e in order if e.type == EntryType.NORMAL]
        for n in self.alive():
            k = len(n.payloads)
            if n.payloads != expected[:k]:
                raise self.fail(f"{n.id}: applied sequence diverges from the committed one")
        lead = self.leader()
        if lead is not None:
            n = self.nodes[lead]
            missing = set(self.acked) - set(n.payloads)
            if missing:
                raise self.fail(f"acknowledged values lost on the leader: {sorted(missing)[:5]}")

    # ------------------------------------------------------------------ random faults
    def _inject_faults(self) -> None:
        f = self.faults
        if not f.any():
            return
        for n in self.nodes.values():
            if n.raft is None and self.now >= n.down_until:
                self.restart(n.id)
            elif n.raft is not None and f.crash and self.rng.random() < f.crash:
                self.crash(n.id)
                n.down_until = self.now + self.rng.randint(1, f.restart_after_ticks)
            elif n.paused_at is not None and self.now >= n.resume_at:
                self.resume(n.id)
            elif n.running and f.pause and self.rng.random() < f.pause:
                self.pause(n.id, until=self.now + self.rng.randint(1, f.pause_ticks))
                leading = n.core().role is Role.LEADER
                if not self._heal_at and (leading or self.rng.random() < 0.5):
                    # and cut off until a while after it resumes: a stalled leader whose
                    # cluster moved on, with stale clients still reaching it (leases)
                    self.isolate(n.id)
                    self._heal_at = n.resume_at + self.rng.randint(1, f.partition_ticks)
        if self._heal_at and self.now >= self._heal_at:
            self.heal()
            self._heal_at = 0
        if f.partition and not self._heal_at and self.rng.random() < f.partition:
            self._random_partition()
            self._heal_at = self.now + self.rng.randint(1, f.partition_ticks)

    def _random_partition(self) -> None:
        ids = sorted(self.nodes)
        kind = self.rng.choice(["isolate", "split", "one_way"])
        if kind == "isolate":
            self.isolate(self.rng.choice(ids))
        elif kind == "split":
            self.rng.shuffle(ids)
            k = self.rng.randint(1, len(ids) - 1)
            for a in ids[:k]:
                for b in ids[k:]:
                    self.cut(a, b)
        else:
            a, b = self.rng.sample(ids, 2)
            self.cut_one_way(a, b)

    def calm(self) -> None:
        """Stop injecting faults, heal, and restart everyone (for the final checks)."""
        self.faults = replace(
            self.faults,
            loss=0.0,
            dup=0.0,
            crash=0.0,
            crash_mid_ready=0.0,
            partition=0.0,
            corrupt_snapshot=0.0,
            pause=0.0,
        )
        self._heal_at = 0
        self.heal()
        for n in self.nodes.values():
            self.restart(n.id)
            self.resume(n.id)


def random_faults(rng: random.Random) -> Faults:
    """A mixed fault configuration drawn from ``rng`` (the sweep's menu)."""
    return Faults(
        loss=rng.choice([0.0, 0.0, 0.02, 0.1]),
        dup=rng.choice([0.0, 0.05]),
        delay_max_ticks=rng.choice([0, 0, 1, 3]),
        reorder=rng.random() < 0.5,
        crash=rng.choice([0.0, 0.005, 0.01]),
        crash_mid_ready=rng.choice([0.0, 0.0, 0.002]),
        restart_after_ticks=rng.choice([5, 20]),
        partition=rng.choice([0.0, 0.01, 0.03]),
        partition_ticks=rng.choice([10, 40]),
        snapshot_every=rng.choice([0, 7, 30]),
        corrupt_snapshot=rng.choice([0.0, 0.2]),
    )


def random_run(
    seed: int,
    *,
    ticks: int = 300,
    faults: Faults | None = None,
    voters: int = 0,
    membership_changes: bool = True,
    leader_flush_ticks: int = 0,
    pause: float = 0.0,
    **config: Any,
) -> Cluster:
    """A seeded run of a mixed workload under mixed faults, then calm and final checks.

    Re-running with the same arguments replays the run exactly.
    """
    rng = random.Random(f"run:{seed}")
    faults = faults if faults is not None else random_faults(rng)
    if leader_flush_ticks:
        faults = replace(faults, leader_flush_ticks=leader_flush_ticks)
    if pause:
        faults = replace(faults, pause=pause, pause_ticks=rng.choice([5, 15, 40]))
    voters = voters or rng.choice([1, 3, 3, 5])
    config.setdefault("max_msg_entries", rng.choice([2, 64]))
    config.setdefault("snapshot_chunk_bytes", rng.choice([61, 512]))
    config.setdefault("max_inflight_msgs", rng.choice([1, 4]))
    config.setdefault("lease_reads", rng.random() < 0.3)
    config.setdefault("pre_vote", rng.random() < 0.8)
    c = Cluster(voters, spares=1 if membership_changes else 0, seed=seed, faults=faults, **config)
    for t in range(ticks):
        c.tick()
        r = rng.random()
        if r < 0.5:
            c.propose(b"s%d-%d" % (seed, t))
        elif r < 0.6:
            # any node that thinks it leads: a client whose leader hint is stale reaches
            # a deposed or partitioned leader as well, and its lease must not lie
            leaders = sorted(
                n.id for n in c.nodes.values() if n.running and n.core().role is Role.LEADER
            )
            c.read(b"r%d" % t, node=rng.choice(leaders) if leaders else None)
        elif r < 0.62:
            _random_transfer(c, rng)
        elif r < 0.65 and membership_changes:
            _random_membership(c, rng)
    c.calm()
    # ~20 election timeouts: without pre-vote a candidate whose log is too short to win
    # keeps resetting the others' timers, and only the randomized timeouts break the tie
    if not c.run_until(lambda: c.leader() is not None, 300):
        raise c.fail("liveness: no leader after faults stopped")
    for i in range(3):
        c.propose(b"final-%d" % i)
    if not c.run_until(lambda: _caught_up(c), 300):
        raise c.fail("liveness: a member did not catch up after faults stopped")
    c.check_final()
    return c


def _caught_up(c: Cluster) -> bool:
    lead = c.leader()
    if lead is None:
        return False
    core = c.core(lead)
    last = core.last_index
    return all(c.nodes[n].applied >= last for n in core.membership.ids())


def _random_transfer(c: Cluster, rng: random.Random) -> None:
    lead = c.leader()
    if lead is None:
        return
    core = c.core(lead)
    targets = sorted(set(core.membership.voters) - {lead})
    if targets:
        core.transfer_leader(rng.choice(targets))
        c.settle()


def _random_membership(c: Cluster, rng: random.Random) -> None:
    """One single-server change: add or promote a node, or demote/remove one."""
    lead = c.leader()
    if lead is None:
        return
    core = c.core(lead)
    m = core.membership
    voters, learners = dict(m.voters), dict(m.learners)
    outside = sorted(set(c.nodes) - m.ids())
    choice = rng.random()
    ready = sorted(n for n in learners if not c.nodes[n].joining)  # the node promotes
    if ready and choice < 0.4:  # a re-provisioned learner only once it has caught up
        nid = rng.choice(ready)
        voters[nid] = learners.pop(nid)
    elif outside and choice < 0.7:
        nid = rng.choice(outside)
        learners[nid] = f"addr-{nid}"
        if rng.random() < 0.5 and core.commit >= core.config_index:
            c.wipe(nid)  # its removal is committed: re-provision it under the same id
    elif len(voters) > 1:
        nid = rng.choice(sorted(voters))
        del voters[nid]
        if rng.random() < 0.5:
            learners[nid] = f"addr-{nid}"
    else:
        return
    try:
        _term, index = core.propose_membership(Membership(voters=voters, learners=learners))
    except (ChangeInProgress, ProposalDropped):
        return
    for nid in learners:
        c.joined(nid, index)  # no-op unless it was wiped and waits to be added
    c.settle()
