"""A Jepsen-style nemesis for a :class:`~zraft.launcher.LocalCluster` of real node processes.

Faults: network partitions (majority/minority, isolated leader, bridge, one-way
loss), SIGKILL + restart, SIGSTOP/SIGCONT pauses longer than an election
timeout, membership churn (remove, wipe, re-join) and disk damage after a crash.

Why partitions work the way they do: every node binds its own loopback address,
but the transport's outgoing DEALER connections do not bind a source address,
so every node's packets leave from 127.0.0.1 and cannot be told apart by source
IP. Instead each node process runs under its own uid (``setpriv``) and iptables
matches the *sending socket's owner* (``-m owner --uid-owner``) plus the
destination address. Source-address rules are added too, so the partitions
keep working if the transport ever binds its source. All of it runs only inside
a private network namespace (``unshare --net``), so no rule can touch the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zraft.client import Client
from zraft.errors import ZraftError
from zraft.launcher import LocalCluster, NodeProc

#: Every fault kind the nemesis knows; the gauntlet's --nemesis picks from these.
FAULT_KINDS: tuple[str, ...] = ("partition", "kill", "pause", "membership", "disk")
PARTITION_KINDS: tuple[str, ...] = ("majority_minority", "isolate_leader", "bridge", "one_way")

#: First uid handed to node processes (n1 gets UID_BASE + 1, ...).
UID_BASE = 41000
#: Env marker set by a tool that re-exec'ed itself inside ``unshare --net``.
NETNS_ENV = "ZRAFT_PRIVATE_NETNS"
#: The most fault events one log holds: a runaway nemesis fails loudly.
MAX_EVENTS = 100_000
COMMAND_TIMEOUT_S = 10.0

Drop = tuple[str, str]  #: traffic from the first node to the second is dropped


# --------------------------------------------------------------------------- mechanism


@dataclass(frozen=True, slots=True)
class Mechanism:
    """Whether network partitions can run here, and if not, why not."""

    partitions: bool
    reason: str
    can_unshare: bool = False  #: a tool may re-exec itself under ``unshare --net``


def _run_ok(cmd: Sequence[str]) -> bool:
    try:
        res = subprocess.run(list(cmd), capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def netns_id() -> str:
    """This process's network namespace (``net:[4026531833]``), or "" if unknown."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def in_private_netns() -> bool:
    """True inside a namespace that a re-exec made for us (see :func:`unshare_command`).

    The parent records its namespace in ``NETNS_ENV``; we must be in another one
    that holds nothing but a loopback interface, so no rule can reach the host.
    """
    parent = os.environ.get(NETNS_ENV, "")
    own = netns_id()
    if not parent or not own or parent == own:
        return False
    try:
        res = subprocess.run(
            ["ip", "-o", "link", "show"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    names = [line.split(":")[1].strip() for line in res.stdout.splitlines() if ":" in line]
    return res.returncode == 0 and names == ["lo"]


def unshare_command(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Command and environment that re-run ``argv`` in a fresh private network namespace."""
    env = {**os.environ, NETNS_ENV: netns_id()}
    return ["unshare", "--net", "--", *argv], env


def detect_mechanism(*, probe: bool = True) -> Mechanism:
    """Are ``unshare``, ``ip``, ``iptables`` and ``setpriv`` present and working as root?

    ``partitions`` is True only inside a private network namespace where
    iptables answers; ``can_unshare`` says a re-exec under ``unshare --net``
    would get there.
    """
    if os.geteuid() != 0:
        return Mechanism(False, "not root: iptables and setpriv need root")
    missing = [t for t in ("unshare", "ip", "iptables", "setpriv") if shutil.which(t) is None]
    if missing:
        return Mechanism(
            False,
            f"missing tools: {', '.join(missing)} (apt-get install iptables iproute2 util-linux)",
        )
    can_unshare = not probe or _run_ok(["unshare", "--net", "true"])
    if not in_private_netns():
        why = "not inside a private network namespace"
        if not can_unshare:
            why += "; `unshare --net` fails here"
        return Mechanism(False, why, can_unshare)
    if probe and not _run_ok(["iptables", "-w", "-S", "OUTPUT"]):
        return Mechanism(False, "iptables does not work in this namespace", can_unshare)
    return Mechanism(
        True, "iptables owner/address rules in a private network namespace", can_unshare
    )


def bring_up_loopback() -> None:
    """A fresh network namespace has ``lo`` down: bring it up (only inside our own netns)."""
    assert in_private_netns(), "refusing to touch the host's interfaces"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=COMMAND_TIMEOUT_S)


# --------------------------------------------------------------------------- partitions (pure)


@dataclass(frozen=True, slots=True)
class Partition:
    """A named set of directed drops; ``components`` is for the record only."""

    name: str
    drops: frozenset[Drop]
    components: tuple[tuple[str, ...], ...] = ()

    def describe(self) -> str:
        if self.components:
            return f"{self.name}: " + " | ".join(",".join(c) for c in self.components)
        return f"{self.name}: " + ", ".join(f"{a}->{b}" for a, b in sorted(self.drops))


def cut_between(*groups: Iterable[str]) -> frozenset[Drop]:
    """Every pair of nodes in different groups loses traffic both ways."""
    parts = [sorted(set(g)) for g in groups]
    drops: set[Drop] = set()
    for i, a_group in enumerate(parts):
        for b_group in parts[i + 1 :]:
            for a in a_group:
                for b in b_group:
                    assert a != b, "a node is in one group only"
                    drops.add((a, b))
                    drops.add((b, a))
    return frozenset(drops)


def majority_minority(nodes: Sequence[str], rng: random.Random) -> Partition:
    """A random split: the largest minority on one side, a bare majority on the other."""
    assert len(nodes) >= 2
    shuffled = sorted(nodes)
    rng.shuffle(shuffled)
    minority = shuffled[: (len(nodes) - 1) // 2 or 1]
    majority = shuffled[len(minority) :]
    comps = (tuple(sorted(minority)), tuple(sorted(majority)))
    return Partition("majority_minority", cut_between(minority, majority), comps)


def isolate(node: str, nodes: Sequence[str]) -> Partition:
    """``node`` (typically the leader) alone on one side."""
    assert node in nodes
    rest = [n for n in nodes if n != node]
    return Partition("isolate_leader", cut_between([node], rest), ((node,), tuple(sorted(rest))))


def bridge(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Two halves that cannot talk, and one node that talks to both (Jepsen's bridge)."""
    assert len(nodes) >= 3
    shuffled = sorted(nodes)
    rng.shuffle(shuffled)
    middle, rest = shuffled[0], shuffled[1:]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    comps = (tuple(sorted(left)), (middle,), tuple(sorted(right)))
    return Partition("bridge", cut_between(left, right), comps)


def one_way(src: str, dst: str) -> Partition:
    """Traffic from ``src`` to ``dst`` is lost; ``dst`` still reaches ``src``."""
    assert src != dst
    return Partition("one_way", frozenset({(src, dst)}))


def choose_partition(
    kind: str, nodes: Sequence[str], leader: str | None, rng: random.Random
) -> Partition:
    """One partition of ``kind``; leader-based kinds fall back to a random node."""
    target = leader if leader in nodes else rng.choice(sorted(nodes))
    assert target is not None
    if kind == "majority_minority":
        return majority_minority(nodes, rng)
    if kind == "isolate_leader":
        return isolate(target, nodes)
    if kind == "bridge":
        return bridge(nodes, rng)
    if kind == "one_way":
        other = rng.choice(sorted(n for n in nodes if n != target))
        return one_way(target, other) if rng.random() < 0.5 else one_way(other, target)
    raise ValueError(f"unknown partition kind {kind!r}")


def iptables_rules(
    drops: Iterable[Drop], uids: dict[str, int], ips: dict[str, str]
) -> list[list[str]]:
    """iptables argument lists (after ``iptables -w``) that enforce ``drops``.

    The owner rule matches the sending process's uid, which works whatever source
    address the kernel picks; the address rule matches a bound source address.
    """
    rules: list[list[str]] = []
    for src, dst in sorted(set(drops)):
        dst_ip = ips[dst]
        if src in uids:
            rules.append(
                [
                    "-A",
                    "OUTPUT",
                    "-m",
                    "owner",
                    "--uid-owner",
                    str(uids[src]),
                    "-d",
                    dst_ip,
                    "-j",
                    "DROP",
                ]
            )
        if ips[src] != dst_ip and ips[src] != "127.0.0.1":
            rules.append(["-A", "OUTPUT", "-s", ips[src], "-d", dst_ip, "-j", "DROP"])
    return rules


def host_of(address: str) -> str:
    """``tcp://127.0.0.12:7001`` -> ``127.0.0.12``."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0]


class Firewall:
    """Applies and flushes iptables rules; refuses to run outside a private namespace."""

    def __init__(self, runner: Callable[[list[str]], None] | None = None) -> None:
        self._runner = runner or self._iptables
        self.active = False

    @staticmethod
    def _iptables(args: list[str]) -> None:
        assert in_private_netns(), "iptables rules only inside our own network namespace"
        subprocess.run(
            ["iptables", "-w", *args], check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S
        )

    def apply(self, rules: Sequence[list[str]]) -> None:
        for rule in rules:
            self._runner(rule)
        self.active = bool(rules)

    def heal(self) -> None:
        self._runner(["-F", "OUTPUT"])
        self.active = False


# --------------------------------------------------------------------------- the cluster


class NemesisCluster(LocalCluster):
    """A LocalCluster whose node processes may each run under their own uid.

    With ``uid_base`` set (partitions on), node ``i`` runs as ``uid_base + i``
    via ``setpriv``, and its data dir and the log dir are made writable for it.
    """

    def __init__(self, nodes: int = 3, *, uid_base: int | None = None, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        self.uids: dict[str, int] = {}
        #: wiped nodes: from then on they start with --join, never bootstrap a config of their own
        self.wiped: set[str] = set()
        if uid_base is not None:
            assert os.geteuid() == 0, "only root can run nodes under other uids"
            self.uids = {nid: uid_base + i for i, nid in enumerate(self.nodes, 1)}

    def ips(self) -> dict[str, str]:
        return {nid: host_of(n.address) for nid, n in self.nodes.items()}

    def _command(self, node: NodeProc, join: str | None) -> list[str]:
        cmd = super()._command(node, join)
        uid = self.uids.get(node.node_id)
        if uid is None:
            return cmd
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *cmd]

    def start(self, node_id: str | None = None, join: str | None = None) -> None:
        if node_id is None:
            for nid in self.nodes:
                self.start(nid, join)
            return
        if self.uids:
            self._prepare_dirs([node_id])
        if join is None and node_id in self.wiped:
            join = self.join_spec(node_id)
        super().start(node_id, join)

    def join_spec(self, node_id: str) -> str:
        """Every other node's address: where a (re-)joining node asks to be added."""
        return ",".join(n.address for i, n in self.nodes.items() if i != node_id)

    def wipe(self, node_id: str) -> None:
        self.wiped.add(node_id)
        super().wipe(node_id)

    def _prepare_dirs(self, node_ids: list[str]) -> None:
        logs = self.base_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(self.base_dir.stat().st_mode | 0o755)
        logs.chmod(0o1777)
        for nid in node_ids:
            node = self.nodes[nid]
            node.data_dir.mkdir(parents=True, exist_ok=True)
            for path in [node.data_dir, *node.data_dir.rglob("*")]:
                os.chown(path, self.uids[nid], self.uids[nid])


def probe_node_user(uid: int, cwd: Path) -> str:
    """Can a process under ``uid`` start Python and import zraft here? "" if yes, else why not.

    Node processes run under their own uids for partitions; a checkout or venv
    that only root can read would make them fail to start, not the run skip.
    """
    cmd = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--",
        sys.executable,
        "-c",
        "import zmq, msgpack, structlog, zraft.cli",
    ]
    try:
        res = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S * 3, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run python as uid {uid}: {exc}"
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return f"python as uid {uid} cannot import zraft: {tail[:200]}"
    return ""


def traversable_by_others(path: Path) -> bool:
    """Can another uid reach ``path`` (every parent has the others-execute bit)?"""
    for p in [path.resolve(), *path.resolve().parents]:
        if p.exists() and not p.stat().st_mode & stat.S_IXOTH:
            return False
    return True


# --------------------------------------------------------------------------- disk damage


def newest_segment(data_dir: Path) -> Path | None:
    """The active (highest base index) ``*.seg`` file of a node's log, if any."""
    segs = sorted((data_dir / "log").glob("*.seg"))
    return segs[-1] if segs else None


def truncate_tail(path: Path, cut_bytes: int) -> int:
    """Cut ``cut_bytes`` off the end (a torn final write); returns the new size."""
    assert cut_bytes > 0
    size = path.stat().st_size
    new_size = max(0, size - cut_bytes)
    os.truncate(path, new_size)
    return new_size


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte in place (bit rot inside a record)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        assert len(old) == 1, f"offset {offset} is past the end of {path}"
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


# --------------------------------------------------------------------------- the record


class FaultLog:
    """Every fault and heal with wall-clock and run-relative time, as JSON lines."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def record(self, kind: str, action: str, **detail: Any) -> dict[str, Any]:
        event = {
            "time": time.time(),
            "t_s": round(time.monotonic() - self._t0, 3),
            "kind": kind,
            "action": action,
            **detail,
        }
        with self._lock:
            if len(self.events) >= MAX_EVENTS:
                raise OverflowError("fault log is full")
            self.events.append(event)
            if self._file is not None:
                self._file.write(json.dumps(event, default=str) + "\n")
                self._file.flush()
        return event

    def counts(self) -> dict[str, int]:
        """Faults started, by kind (partitions also by their sub-kind)."""
        with self._lock:
            c = Counter(e["kind"] for e in self.events if e["action"] == "start")
            c.update(
                f"partition:{e['partition']}"
                for e in self.events
                if e["action"] == "start" and "partition" in e
            )
        return dict(sorted(c.items()))

    def crashes(self) -> list[dict[str, Any]]:
        """Nodes that exited without being asked to (see :meth:`Nemesis.check_crashes`)."""
        with self._lock:
            return [e for e in self.events if e["kind"] == "crash" and e["action"] == "start"]

    def _recoveries(self) -> list[tuple[str, float]]:
        """(fault kind, seconds) of every measured recovery, in order."""
        with self._lock:
            return [
                (e["kind"], e["recovery_s"])
                for e in self.events
                if e["action"] == "recovered" and e.get("recovery_s") is not None
            ]

    def recovery_times_s(self) -> list[float]:
        return [s for _, s in self._recoveries()]

    def recovery_times_by_kind_s(self) -> dict[str, list[float]]:
        """The same, by fault kind: a slow kind hides in the overall figures."""
        out: dict[str, list[float]] = {}
        for kind, s in self._recoveries():
            out.setdefault(kind, []).append(s)
        return dict(sorted(out.items()))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(slots=True)
class NemesisConfig:
    fault_s: tuple[float, float] = (1.5, 4.0)  #: how long one fault lasts
    pause_s: tuple[float, float] = (1.5, 3.0)  #: SIGSTOP: longer than an election timeout
    quiet_s: tuple[float, float] = (0.5, 1.5)  #: calm between a recovery and the next fault
    recovery_timeout_s: float = 30.0
    probe_key: str = "__nemesis_probe__"
    partition_kinds: tuple[str, ...] = PARTITION_KINDS
    concurrency: int = 1  #: faults that may run at the same time (disk damage runs alone)
    watch_s: float = 0.5  #: how often the supervisor looks for nodes that died unasked
    repair_patience_s: float = 60.0  #: how long a disk repair keeps asking for a leader


# --------------------------------------------------------------------------- the nemesis


#: Ends a fault. It may first wait (a pause lasts at least its pause_s, whatever the
#: hold time); then it returns the monotonic time the fault ended, which recovery is
#: measured from, or None for "when heal was called".
Heal = Callable[[], float | None]


class Nemesis:
    """Runs faults: start one, hold it, heal it, time the recovery, rest; repeat.

    ``config.concurrency`` workers run cycles at once, so faults overlap (a
    membership change during a partition, a kill during a pause). Each fault
    claims the nodes it touches, so two faults never fight over one node. Disk
    damage runs alone: a torn tail loses an entry the node had acknowledged,
    which Raft tolerates only while every other node is healthy; waiting for
    a committed write after each heal keeps such damage from compounding, so
    what the checker finds is zraft's fault, not the nemesis's.
    """

    def __init__(
        self,
        cluster: NemesisCluster,
        kinds: Sequence[str],
        rng: random.Random,
        log: FaultLog,
        *,
        firewall: Firewall | None = None,
        config: NemesisConfig | None = None,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        assert not unknown, f"unknown fault kinds {sorted(unknown)}"
        assert kinds, "at least one fault kind"
        assert "partition" not in kinds or firewall is not None, "partitions need a firewall"
        self.cluster, self.kinds, self.rng, self.log = cluster, list(kinds), rng, log
        self.firewall = firewall
        self.config = config or NemesisConfig()
        assert 1 <= self.config.concurrency <= 4, "1..4 concurrent faults"
        self.down: set[str] = set()  #: killed, to restart at heal
        self.paused: set[str] = set()
        self.rejoin: set[str] = set()  #: removed from membership, to start with --join
        self._claimed: set[str] = set()  #: nodes (and "firewall") a running fault owns
        self._active = 0  #: faults running now
        self._exclusive = False  #: a fault that must run alone is running
        self._cond = threading.Condition(threading.RLock())
        self._rng_lock = threading.Lock()
        self._probe_n = 0
        self._stop = threading.Event()
        self._idle = threading.Event()  #: set while no run() is in progress
        self._idle.set()

    # ------------------------------------------------------------------ loop

    def run(self, deadline: float) -> None:
        """Fault cycles until ``deadline`` (monotonic) or :meth:`stop`; always heals."""
        workers = [
            threading.Thread(target=self._worker, args=(deadline,), name=f"nemesis-{i}")
            for i in range(self.config.concurrency)
        ]
        workers.append(threading.Thread(target=self._watch, args=(deadline,), name="supervisor"))
        self._idle.clear()
        try:
            for w in workers:
                w.start()
        finally:
            for w in workers:
                w.join()
            self.heal_all()
            self._idle.set()

    def halt(self, timeout_s: float = 120.0) -> bool:
        """Stop and wait until :meth:`run` has healed and returned (True if it did).

        Call before closing the cluster: a fault still in flight would otherwise
        restart a node after the cluster has ended its processes.
        """
        self.stop()
        return self._idle.wait(timeout_s)

    def _worker(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._rng_lock:
                kind = self.rng.choice(self.kinds)
                quiet_s = self.rng.uniform(*self.config.quiet_s)
            self.cycle(kind, deadline)
            self._wait(quiet_s)

    def _watch(self, deadline: float) -> None:
        while not self._stop.wait(self.config.watch_s) and time.monotonic() < deadline:
            self.check_crashes()

    def check_crashes(self) -> list[str]:
        """Restart nodes that exited unasked, as systemd's ``Restart=on-failure`` would.

        A crash is a finding, not a fault we chose: each one is logged with its
        exit status and last stderr line, and the verdict lists them. Restarting
        keeps one crash from silently turning every later fault into a quorum loss.
        """
        with self._cond:
            busy = self._claimed | self.down | self.rejoin
            crashed = [
                nid
                for nid, n in sorted(self.cluster.nodes.items())
                if nid not in busy and n.proc is not None and n.proc.poll() is not None
            ]
            self._claimed |= set(crashed)  # nobody else touches it while it restarts
        for nid in crashed:
            node = self.cluster.nodes[nid]
            assert node.proc is not None
            self.log.record(
                "crash",
                "start",
                node=nid,
                pid=node.pid,
                exit_code=node.proc.returncode,
                evidence=_last_stderr_line(self.cluster.base_dir / "logs", nid),
            )
            try:
                self.cluster.start(nid)
                self.log.record("crash", "heal", node=nid, pid=self.cluster.nodes[nid].pid)
            finally:
                self._release([nid])
        return crashed

    def stop(self) -> None:
        self._stop.set()

    def _wait(self, seconds: float) -> None:
        self._stop.wait(max(0.0, seconds))

    def _rand(self) -> random.Random:
        """A per-call generator seeded from the run's: threads never share one."""
        with self._rng_lock:
            return random.Random(self.rng.getrandbits(64))

    def cycle(self, kind: str, deadline: float | None = None) -> None:
        """Start one fault of ``kind``, hold it, heal it, measure the recovery."""
        rng = self._rand()
        hold_s = rng.uniform(*self.config.fault_s)
        if deadline is not None:
            hold_s = min(hold_s, max(0.5, deadline - time.monotonic()))
        if not self._enter(exclusive=kind == "disk"):
            return
        try:
            start: Callable[[random.Random], Heal | None] = getattr(self, f"_fault_{kind}")
            try:
                heal = start(rng)
            except (ZraftError, OSError, subprocess.SubprocessError) as exc:
                self.log.record(kind, "error", error=f"{type(exc).__name__}: {exc}")
                heal = None
            if heal is None:
                return
            self._wait(hold_s)
            healed_at = time.monotonic()
            ended_at = heal()
            self.measure_recovery(kind, healed_at if ended_at is None else ended_at)
        finally:
            self._leave()

    def _enter(self, *, exclusive: bool) -> bool:
        """Wait for room: an exclusive fault runs alone, others alongside each other."""
        with self._cond:
            while not self._stop.is_set():
                if self._try_enter(exclusive=exclusive):
                    return True
                self._cond.wait(0.2)
            return False

    def _try_enter(self, *, exclusive: bool) -> bool:
        with self._cond:
            if self._exclusive or (exclusive and self._active > 0):
                return False
            self._active += 1
            self._exclusive = exclusive
            return True

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._exclusive = False
            self._cond.notify_all()

    def _claim(self, names: Iterable[str]) -> bool:
        with self._cond:
            wanted = set(names)
            if wanted & self._claimed:
                return False
            self._claimed |= wanted
            return True

    def _release(self, names: Iterable[str]) -> None:
        with self._cond:
            self._claimed -= set(names)

    # ------------------------------------------------------------------ observation

    def leader(self, timeout_s: float = 0.5) -> str | None:
        sts = self.cluster.statuses(timeout=timeout_s)
        leaders = [nid for nid, s in sts.items() if s.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def _free(self) -> list[str]:
        """Running, unpaused member nodes no fault has claimed."""
        with self._cond:
            busy = self._claimed | self.paused | self.rejoin | self.down
            return sorted(
                nid for nid, n in self.cluster.nodes.items() if n.alive() and nid not in busy
            )

    def _pick(
        self, rng: random.Random, *, prefer_leader: float, followers_only: bool = False
    ) -> tuple[str | None, str | None]:
        """(target, leader): a claimed free node, the leader with ``prefer_leader`` odds."""
        leader = self.leader()
        free = [n for n in self._free() if not (followers_only and n == leader)]
        if not free:
            return None, leader
        target = leader if leader in free and rng.random() < prefer_leader else rng.choice(free)
        return (target if self._claim([target]) else None), leader

    def measure_recovery(self, kind: str, healed_at: float) -> float | None:
        """Seconds from ``healed_at`` to the first write that commits (None: none did)."""
        deadline = healed_at + self.config.recovery_timeout_s
        with Client(
            self.cluster.endpoints,
            cluster_id=self.cluster.cluster_id,
            timeout=1.0,
            attempt_timeout=0.5,
        ) as client:
            while time.monotonic() < deadline and not self._stop.is_set():
                with self._cond:
                    self._probe_n += 1
                    n = self._probe_n
                try:
                    client.apply("put", self.config.probe_key, n, timeout=1.0)
                except ZraftError:
                    continue
                recovery_s = round(time.monotonic() - healed_at, 3)
                self.log.record(kind, "recovered", recovery_s=recovery_s)
                return recovery_s
        self.log.record(
            kind,
            "recovered",
            recovery_s=None,
            error=f"no write committed within {self.config.recovery_timeout_s}s",
        )
        return None

    # ------------------------------------------------------------------ faults

    def _fault_partition(self, rng: random.Random) -> Heal | None:
        assert self.firewall is not None
        fw = self.firewall
        if not self._claim(["firewall"]):
            return None
        kind = rng.choice(self.config.partition_kinds)
        part = choose_partition(kind, sorted(self.cluster.nodes), self.leader(), rng)
        rules = iptables_rules(part.drops, self.cluster.uids, self.cluster.ips())
        try:
            fw.apply(rules)
        except BaseException:
            self._release(["firewall"])
            raise
        self.log.record(
            "partition", "start", partition=part.name, detail=part.describe(), rules=len(rules)
        )

        def heal() -> None:
            fw.heal()
            self.log.record("partition", "heal", partition=part.name)
            self._release(["firewall"])

        return heal

    def _fault_kill(self, rng: random.Random) -> Heal | None:
        target, leader = self._pick(rng, prefer_leader=0.5)
        if target is None:
            return None
        pid = self.cluster.nodes[target].pid
        self.cluster.kill(target, signal.SIGKILL)
        with self._cond:
            self.down.add(target)
        self.log.record("kill", "start", node=target, pid=pid, was_leader=target == leader)

        def heal() -> None:
            self._restart(target)
            self._release([target])

        return heal

    def _restart(self, nid: str) -> None:
        with self._cond:
            if nid not in self.down:
                return  # heal_all got there first
            self.down.discard(nid)
        self.cluster.start(nid)
        self.log.record("kill", "heal", node=nid, pid=self.cluster.nodes[nid].pid)

    def _fault_pause(self, rng: random.Random) -> Heal | None:
        target, leader = self._pick(rng, prefer_leader=0.6)
        if target is None:
            return None
        pause_s = rng.uniform(*self.config.pause_s)
        pid = self.cluster.nodes[target].pid
        self.cluster.kill(target, signal.SIGSTOP)
        with self._cond:
            self.paused.add(target)
        self.log.record(
            "pause",
            "start",
            node=target,
            pid=pid,
            was_leader=target == leader,
            pause_s=round(pause_s, 3),
        )
        until = time.monotonic() + pause_s

        def heal() -> float:
            self._wait(until - time.monotonic())  # at least pause_s, whatever the hold time
            resumed_at = time.monotonic()  # the rest of the pause is not recovery
            self._resume(target)
            self._release([target])
            return resumed_at

        return heal

    def _resume(self, nid: str) -> None:
        with self._cond:
            if nid not in self.paused:
                return
            self.paused.discard(nid)
        with contextlib.suppress(ProcessLookupError):
            self.cluster.kill(nid, signal.SIGCONT)
        self.log.record("pause", "heal", node=nid)

    def _fault_membership(self, rng: random.Random) -> Heal | None:
        if not self._claim(["membership"]):
            return None  # one membership change at a time, as Raft makes them anyway
        heal: Heal | None = None
        try:
            heal = self._start_membership(rng)
        finally:
            if heal is None:
                self._release(["membership"])
        return heal

    def _start_membership(self, rng: random.Random) -> Heal | None:
        voters = self._voters()
        if len(voters) < 3 or len(set(voters) & set(self._free())) < 3:
            self.log.record("membership", "skipped", reason=f"fewer than 3 healthy voters {voters}")
            return None
        target, _leader = self._pick(rng, prefer_leader=0.0, followers_only=True)
        if target is None:
            return None
        if target not in voters or not self._remove_and_wipe(target, "membership"):
            self._release([target])
            return None

        def heal() -> None:
            self._rejoin(target)
            self._release([target, "membership"])

        return heal

    def _voters(self) -> list[str]:
        """The leader's committed view of the voters ([] if no leader answers)."""
        with self.cluster.client(timeout=3.0) as client:
            try:
                return sorted(client.members(timeout=3.0).get("voters", {}))
            except ZraftError:
                return []

    def _remove_and_wipe(self, target: str, kind: str, *, patience_s: float = 0.0) -> bool:
        """Remove ``target`` from the membership; wipe it only once that is sure.

        With ``patience_s`` the removal is retried (an election may be running)
        until it sticks or the patience runs out, as an operator would.
        """
        give_up = time.monotonic() + patience_s
        while True:
            reason = self._try_remove(target)
            if not reason:
                break
            if time.monotonic() >= give_up or self._stop.is_set():
                self.log.record(kind, "skipped", node=target, reason=reason)
                return False
            self.log.record(kind, "retry", node=target, reason=reason)
            self._wait(1.0)
        self.cluster.kill(target, signal.SIGKILL)
        self.cluster.wipe(target)
        with self._cond:
            self.rejoin.add(target)
        self.log.record(kind, "start", node=target, detail="removed, killed, wiped")
        return True

    def _try_remove(self, target: str) -> str:
        """'' once ``target`` is out of the leader's membership, else why not."""
        with self.cluster.client(timeout=5.0) as client:
            try:
                client.remove_member(target, timeout=5.0)
                members = client.members(timeout=5.0)
            except ZraftError as exc:
                return f"remove failed: {exc}"
        if target in members.get("voters", {}) or target in members.get("learners", {}):
            return "still a member after remove"
        return ""

    def _rejoin(self, nid: str) -> None:
        with self._cond:
            if nid not in self.rejoin:
                return
            self.rejoin.discard(nid)
        self.cluster.start(nid, join=self.cluster.join_spec(nid))
        self.log.record("membership", "heal", node=nid, pid=self.cluster.nodes[nid].pid)

    def _fault_disk(self, rng: random.Random) -> Heal | None:
        if why := self._unhealthy():
            self.log.record("disk", "skipped", reason=why)
            return None
        target, _leader = self._pick(rng, prefer_leader=0.0, followers_only=True)
        if target is None:
            self.log.record("disk", "skipped", reason="no follower")
            return None
        node = self.cluster.nodes[target]
        self.cluster.kill(target, signal.SIGKILL)
        damage = self._damage(node.data_dir, rng)
        self.log.record("disk", "start", node=target, damage=damage)
        self.cluster.start(target)
        if self._exited(target, timeout_s=3.0) is None:
            self.log.record("disk", "survived", node=target, damage=damage)
            return lambda: self._release([target])
        code = node.proc.returncode if node.proc is not None else None
        self.log.record(
            "disk",
            "refused_to_start",
            node=target,
            exit_code=code,
            evidence=_last_error_line(self.cluster.base_dir / "logs", target),
        )
        patience_s = self.config.repair_patience_s
        if not self._remove_and_wipe(target, "disk_repair", patience_s=patience_s):
            with self._cond:
                self.down.add(target)  # restarted as is at heal: it may refuse again, visibly

        def heal() -> None:
            self._restart(target)
            self._rejoin(target)
            self._release([target])

        return heal

    def _unhealthy(self) -> str:
        """Why the cluster cannot afford to lose one node's acknowledged entries ('' if it can).

        A torn tail takes back an acknowledgement; Raft survives that only when
        every other node still holds what it acknowledged, so damage waits for
        a whole cluster: every node running and every node a voter again.
        """
        if down := sorted(nid for nid, n in self.cluster.nodes.items() if not n.alive()):
            return f"nodes down: {down}"
        voters = self._voters()
        if set(voters) != set(self.cluster.nodes):
            return f"not every node is a voter: {voters}"
        return ""

    def _exited(self, nid: str, timeout_s: float) -> int | None:
        """The node's exit code if it exits within ``timeout_s``, else None (still running)."""
        proc = self.cluster.nodes[nid].proc
        assert proc is not None
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    @staticmethod
    def _damage(data_dir: Path, rng: random.Random) -> str:
        """Torn tail (usual), bit rot in the newest segment, or a damaged hard-state file."""
        seg = newest_segment(data_dir)
        roll = rng.random()
        if seg is not None and seg.stat().st_size > 64 and roll < 0.6:
            cut = rng.randint(1, 7)
            truncate_tail(seg, cut)
            return f"truncated {cut} bytes off {seg.name}"
        if seg is not None and seg.stat().st_size > 64 and roll < 0.8:
            off = rng.randrange(seg.stat().st_size // 2, seg.stat().st_size)
            flip_byte(seg, off)
            return f"flipped byte {off} of {seg.name}"
        hs = data_dir / "hardstate"
        if hs.exists() and hs.stat().st_size > 0:
            flip_byte(hs, hs.stat().st_size - 1)
            return "flipped last byte of hardstate"
        return "nothing to damage"

    # ------------------------------------------------------------------ heal

    def heal_all(self) -> None:
        """Flush rules, continue paused nodes, restart killed ones, re-join removed ones."""
        if self.firewall is not None and self.firewall.active:
            self.firewall.heal()
            self.log.record("partition", "heal", detail="heal_all")
        with self._cond:
            paused, down, rejoin = sorted(self.paused), sorted(self.down), sorted(self.rejoin)
        for nid in paused:
            self._resume(nid)
        for nid in down:
            self._restart(nid)
        for nid in rejoin:
            self._rejoin(nid)
        self.check_crashes()


def _last_stderr_line(log_dir: Path, node_id: str, max_bytes: int = 16 << 10) -> str:
    """What a process said last before it died (an abort's assertion message, say)."""
    path = log_dir / f"{node_id}.stderr"
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
        return next((ln[:500] for ln in reversed(lines) if ln), "")
    return ""


def _last_error_line(log_dir: Path, node_id: str, max_bytes: int = 64 << 10) -> str:
    """The last log or stderr line that looks like an error, for the record."""
    found = ""
    for path in (log_dir / f"{node_id}.jsonl", log_dir / f"{node_id}.stderr"):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            for line in f.read().decode(errors="replace").splitlines():
                if "error" in line.lower() or "corrupt" in line.lower():
                    found = line.strip()[:500]
    return found
