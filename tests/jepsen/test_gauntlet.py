"""The gauntlet: nemesis rules and workload on their own, then short real runs for CI.

The unit tests need no cluster: partition shapes, iptables rules, the fault
log, mechanism detection, and the workload's outcome classification against an
in-memory fake client. The process tests run ``tools/gauntlet.py`` for ~20 s
each with a different fault mix and seed and require a valid verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from zraft.client import Client
from zraft.errors import BusyError, NotLeaderError, ReadTimeout, UnknownOutcome
from zraft.launcher import LocalCluster
from zraft.testing.history import HistoryRecorder
from zraft.testing.linearizability import check
from zraft.testing.nemesis import (
    NETNS_ENV,
    FaultLog,
    Firewall,
    Mechanism,
    Nemesis,
    NemesisCluster,
    NemesisConfig,
    bridge,
    choose_partition,
    cut_between,
    detect_mechanism,
    flip_byte,
    host_of,
    in_private_netns,
    iptables_rules,
    isolate,
    majority_minority,
    one_way,
    truncate_tail,
)
from zraft.testing.workload import Workload, WorkloadConfig, unexplained_final_values

ROOT = Path(__file__).resolve().parents[2]
GAUNTLET = ROOT / "tools" / "gauntlet.py"
NODES5 = ["n1", "n2", "n3", "n4", "n5"]


# --------------------------------------------------------------------------- partitions


def _reachable(drops: frozenset[tuple[str, str]], a: str, b: str) -> bool:
    return (a, b) not in drops


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("n", [3, 5])
def test_majority_minority_splits_into_a_bare_majority_and_the_rest(seed: int, n: int) -> None:
    nodes = NODES5[:n]
    part = majority_minority(nodes, random.Random(seed))
    minority, majority = part.components
    assert len(majority) == n // 2 + 1 and len(minority) == n - len(majority)
    assert set(minority) | set(majority) == set(nodes)
    for a in minority:
        for b in majority:
            assert not _reachable(part.drops, a, b) and not _reachable(part.drops, b, a)
    for group in part.components:  # inside a side, everyone still talks
        assert all(_reachable(part.drops, a, b) for a in group for b in group)


def test_isolate_cuts_one_node_off_both_ways() -> None:
    part = isolate("n2", NODES5)
    assert part.drops == cut_between(["n2"], ["n1", "n3", "n4", "n5"])
    assert len(part.drops) == 8
    assert _reachable(part.drops, "n1", "n3")


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("n", [3, 5])
def test_bridge_node_sees_both_halves_which_do_not_see_each_other(seed: int, n: int) -> None:
    nodes = NODES5[:n]
    part = bridge(nodes, random.Random(seed))
    left, (middle,), right = part.components
    assert left and right
    for x in (*left, *right):
        assert _reachable(part.drops, middle, x) and _reachable(part.drops, x, middle)
    for a in left:
        for b in right:
            assert not _reachable(part.drops, a, b) and not _reachable(part.drops, b, a)


def test_one_way_drops_only_one_direction() -> None:
    part = one_way("n1", "n2")
    assert part.drops == frozenset({("n1", "n2")})
    assert _reachable(part.drops, "n2", "n1")


def test_choose_partition_targets_the_leader_and_rejects_unknown_kinds() -> None:
    rng = random.Random(3)
    assert choose_partition("isolate_leader", NODES5, "n4", rng).components[0] == ("n4",)
    for _ in range(10):
        part = choose_partition("one_way", NODES5, "n4", rng)
        ((a, b),) = part.drops
        assert "n4" in (a, b)
    with pytest.raises(ValueError, match="unknown partition kind"):
        choose_partition("teleport", NODES5, None, rng)


def test_iptables_rules_match_the_sender_uid_and_the_destination() -> None:
    uids = {"n1": 41001, "n2": 41002}
    ips = {"n1": "127.0.0.11", "n2": "127.0.0.12"}
    rules = iptables_rules({("n1", "n2")}, uids, ips)
    assert [
        "-A",
        "OUTPUT",
        "-m",
        "owner",
        "--uid-owner",
        "41001",
        "-d",
        "127.0.0.12",
        "-j",
        "DROP",
    ] in rules
    assert ["-A", "OUTPUT", "-s", "127.0.0.11", "-d", "127.0.0.12", "-j", "DROP"] in rules
    assert not any("41002" in r for r in rules), "the other direction stays open"
    # 127.0.0.1 is every unbound socket's source: a source rule on it would cut the clients off
    assert iptables_rules({("n1", "n2")}, {}, {"n1": "127.0.0.1", "n2": "127.0.0.12"}) == []


def test_firewall_applies_rules_then_flushes_on_heal() -> None:
    calls: list[list[str]] = []
    fw = Firewall(runner=calls.append)
    fw.apply([["-A", "OUTPUT", "-d", "127.0.0.12", "-j", "DROP"]])
    assert fw.active
    fw.heal()
    assert calls[-1] == ["-F", "OUTPUT"] and not fw.active


def test_host_of_parses_zmq_addresses() -> None:
    assert host_of("tcp://127.0.0.12:7001") == "127.0.0.12"


# --------------------------------------------------------------------------- mechanism, log


def test_mechanism_is_off_outside_a_private_namespace_with_a_reason() -> None:
    if os.environ.get(NETNS_ENV):
        pytest.skip("this test process runs inside a gauntlet namespace")
    assert not in_private_netns()
    mech = detect_mechanism()
    assert not mech.partitions
    assert mech.reason  # a person reading the verdict learns why


def test_mechanism_reports_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    mech = detect_mechanism(probe=False)
    assert mech == Mechanism(False, mech.reason) and not mech.partitions
    assert "iptables" in mech.reason or "root" in mech.reason


def test_fault_log_counts_starts_and_collects_recoveries(tmp_path: Path) -> None:
    log = FaultLog(tmp_path / "nemesis.jsonl")
    log.record("partition", "start", partition="bridge")
    log.record("partition", "heal")
    log.record("partition", "recovered", recovery_s=0.25)
    log.record("kill", "start", node="n1")
    log.record("kill", "recovered", recovery_s=None)
    log.close()
    assert log.counts() == {"kill": 1, "partition": 1, "partition:bridge": 1}
    assert log.recovery_times_s() == [0.25]
    assert log.recovery_times_by_kind_s() == {"partition": [0.25]}
    lines = [json.loads(x) for x in (tmp_path / "nemesis.jsonl").read_text().splitlines()]
    assert [e["action"] for e in lines] == ["start", "heal", "recovered", "start", "recovered"]
    assert all(isinstance(e["time"], float) and e["t_s"] >= 0 for e in lines)


def test_nemesis_claims_keep_two_faults_off_one_node() -> None:
    nem = Nemesis(cast(NemesisCluster, None), ["kill"], random.Random(1), FaultLog())
    assert nem._claim(["n1"])
    assert not nem._claim(["n1", "n2"]), "n1 is taken: nothing is claimed"
    assert nem._claim(["n2"])
    nem._release(["n1"])
    assert nem._claim(["n1"])
    assert nem._try_enter(exclusive=False) and nem._try_enter(exclusive=False)
    assert not nem._try_enter(exclusive=True), "disk damage waits for the others"
    nem._leave()
    nem._leave()
    assert nem._try_enter(exclusive=True), "runs once nothing else does"
    assert not nem._try_enter(exclusive=False), "an exclusive fault runs alone"
    nem._leave()
    assert nem._try_enter(exclusive=False)


def test_recovery_is_timed_from_when_a_fault_ended_not_from_when_its_heal_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pause outlasts its hold time (it lasts at least pause_s); its heal waits for
    that first, and the wait was counted as recovery, up to 1.5 s of it."""
    cfg = NemesisConfig(fault_s=(0.01, 0.01))
    nem = Nemesis(cast(NemesisCluster, None), ["pause"], random.Random(1), FaultLog(), config=cfg)
    timed_from: list[float] = []
    monkeypatch.setattr(nem, "measure_recovery", lambda kind, at: timed_from.append(at))
    ended = time.monotonic() + 1000.0  # what the heal reports, far from any real clock

    def fault(rng: random.Random) -> Any:
        return lambda: ended

    monkeypatch.setattr(nem, "_fault_pause", fault)
    nem.cycle("pause")
    assert timed_from == [ended]

    def plain(rng: random.Random) -> Any:
        return lambda: None  # a heal that does not know better: timed from its call

    monkeypatch.setattr(nem, "_fault_pause", plain)
    before = time.monotonic()
    nem.cycle("pause")
    assert before <= timed_from[1] <= time.monotonic()


def test_disk_damage_helpers(tmp_path: Path) -> None:
    f = tmp_path / "00000000000000000001.seg"
    f.write_bytes(bytes(range(100)))
    assert truncate_tail(f, 7) == 93 and f.stat().st_size == 93
    flip_byte(f, 10)
    assert f.read_bytes()[10] == 10 ^ 0xFF


# --------------------------------------------------------------------------- workload


class FakeKV:
    """A linearizable in-memory store (one lock) that can fail the way zraft may."""

    def __init__(self, rng: random.Random, *, lose_acked_puts: bool = False) -> None:
        self.data: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.rng = rng
        self.lose_acked_puts = lose_acked_puts

    def apply(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        roll = self.rng.random()
        if roll < 0.05:
            raise NotLeaderError("not the leader")  # nothing applied
        if roll < 0.08:
            raise BusyError("busy")  # nothing applied
        if roll < 0.12:
            raise UnknownOutcome("lost before it was applied")
        with self.lock:
            result = self._run(name, *args)
        if roll < 0.18:
            raise UnknownOutcome("applied, but the reply was lost")
        return result

    def _run(self, name: str, *args: Any) -> Any:
        if name == "put":
            if not self.lose_acked_puts:
                self.data[args[0]] = args[1]
            return None
        if name == "delete":
            return self.data.pop(args[0], None) is not None
        if name == "cas":
            if self.data.get(args[0]) != args[1]:
                return False
            self.data[args[0]] = args[2]
            return True
        raise AssertionError(name)

    def query(
        self, name: str, *args: Any, consistency: str = "linearizable", timeout: float | None = None
    ) -> Any:
        assert name == "get" and consistency == "linearizable"
        if self.rng.random() < 0.05:
            raise ReadTimeout("slow")
        with self.lock:
            return self.data.get(args[0])

    def close(self) -> None:
        pass


def _run_workload(kv: FakeKV, ops_per_client: int) -> tuple[Workload, HistoryRecorder]:
    rec = HistoryRecorder()
    cfg = WorkloadConfig(clients=3, keys=3, seed=5, think_s=0.0)
    wl = Workload(lambda: kv, rec, cfg)
    for i in range(3):  # deterministic: one client after another, no threads
        last: dict[str, Any] = {}
        rng = random.Random(i)
        for n in range(ops_per_client):
            kind = rng.choice(["get", "put", "cas", "delete"])
            wl.run_op(kv, i, kind, f"k{rng.randrange(3)}", f"c{i}-{n}", last)
    wl.final_reads()
    return wl, rec


def test_workload_classifies_outcomes_and_a_correct_store_is_linearizable() -> None:
    wl, rec = _run_workload(FakeKV(random.Random(1)), 150)
    ops = rec.ops()
    assert len(ops) == 450 + 3
    by = wl.summary()["by_outcome"]
    assert by["ok"] > 0 and by["fail"] > 0 and by["unknown"] > 0
    failed = [op for op in ops if op.ok is False]
    assert failed and all(op.kind != "get" for op in failed), "only NotLeader/Busy fail"
    assert all(op.complete_ns is None for op in ops if op.ok is None)
    writes = [op.value for op in ops if op.kind == "put"]
    assert len(writes) == len(set(writes)), "every written value is unique"
    assert check(ops, timeout_s=30).ok is True
    assert unexplained_final_values(ops, {"k0": "never-written"}) == {"k0": "never-written"}


def test_workload_history_exposes_lost_acknowledged_writes() -> None:
    """A store that acknowledges puts but drops them must fail the checker."""
    _, rec = _run_workload(FakeKV(random.Random(2), lose_acked_puts=True), 150)
    assert check(rec.ops(), timeout_s=30).ok is False


def test_workload_threads_start_and_stop() -> None:
    kv = FakeKV(random.Random(3))
    rec = HistoryRecorder()
    wl = Workload(lambda: kv, rec, WorkloadConfig(clients=4, keys=2, think_s=0.001))
    wl.start()
    threading.Event().wait(0.3)  # let them run a little; correctness does not depend on it
    wl.stop(timeout_s=10)
    n = len(rec)
    assert n > 0 and len(rec) == n, "no op after stop"
    assert check(rec.ops(), timeout_s=30).ok is True


# --------------------------------------------------------------------------- real runs

RUNS = [
    # (label, nemesis, nodes, seed, concurrency)
    ("run1-kill-pause", "kill,pause", 3, 11, 1),
    ("run2-partitions", "partition", 3, 12, 1),
    ("run3-overlapping-membership-kill-pause", "membership,kill,pause", 3, 13, 2),
    ("run4-5nodes-partition-pause-disk", "partition,pause,disk", 5, 14, 1),
]
RUN_TIME_S = 20
RUN_LIMIT_S = 150


@pytest.fixture
def out_dir() -> Iterator[Path]:
    """Under /tmp (not pytest's 0700 tmp_path): node processes run under their own uids."""
    d = Path(tempfile.mkdtemp(prefix="zraft-gauntlet-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_gauntlet(args: list[str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(GAUNTLET), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)  # the tool ends its nodes by PID on SIGTERM
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return -1, out.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.process
@pytest.mark.parametrize(
    ("label", "nemesis", "nodes", "seed", "concurrency"), RUNS, ids=[r[0] for r in RUNS]
)
def test_gauntlet_run(
    label: str, nemesis: str, nodes: int, seed: int, concurrency: int, out_dir: Path
) -> None:
    args = [
        "--time",
        str(RUN_TIME_S),
        "--nemesis",
        nemesis,
        "--nodes",
        str(nodes),
        "--seed",
        str(seed),
        "--out",
        str(out_dir),
        "--clients",
        "4",
        "--keys",
        "5",
    ]
    code, output = _run_gauntlet(args)
    print(f"[{label}] gauntlet {' '.join(args)}\n{output}")
    verdict_file = out_dir / "verdict.json"
    assert verdict_file.exists(), f"[{label}] no verdict (exit {code}):\n{output}"
    verdict = json.loads(verdict_file.read_text())
    if not verdict["nemesis_run"]:
        pytest.skip(f"[{label}] no fault kind can run here: {verdict['skipped']}")
    nem_log = (out_dir / "nemesis.jsonl").read_text()[-4000:]
    assert code == 0 and verdict["ok"] is True, f"[{label}] exit {code}:\n{output}\n{nem_log}"
    assert verdict["linearizable"] is True
    assert verdict["leader_after_heal"], f"[{label}] no leader after heal"
    assert verdict["workload"]["by_outcome"].get("ok", 0) > 0
    assert sum(v for k, v in verdict["faults"].items() if ":" not in k) > 0, "no fault ran"
    assert verdict["recovery_s"]["count"] > 0
    by_kind = verdict["recovery_by_kind_s"]
    assert sum(d["count"] for d in by_kind.values()) == verdict["recovery_s"]["count"]
    assert "by fault: " in output and all(f"{k} x" in output for k in by_kind)
    if "partition" in verdict["nemesis_run"] and verdict["faults"].get("partition", 0) >= 3:
        # the rules really cut traffic: some partition forced a new election
        assert verdict["final_term"] > verdict["initial_term"], verdict
    for warning in verdict.get("warnings", []):
        print(f"[{label}] WARNING (liveness, see the report): {warning}")
    for kind, why in verdict["skipped"].items():
        print(f"[{label}] SKIPPED fault kind {kind}: {why}")


# ------------------------------------------------------------------- bugs the gauntlet found


@pytest.mark.process
def test_stale_node_does_not_acknowledge_add_member_it_cannot_make(out_dir: Path) -> None:
    cluster = LocalCluster(3, base_dir=out_dir / "c")
    try:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        stale = next(n for n in sorted(cluster.nodes) if n != leader)
        cluster.kill(stale, signal.SIGSTOP)  # it will not hear of its own removal
        with cluster.client(timeout=30) as client:
            client.remove_member(stale)
            cluster.kill(stale, signal.SIGKILL)
            cluster.start(stale)  # its log still lists it as a voter
            addr = cluster.nodes[stale].address
            with Client([addr], timeout=5) as direct:
                try:
                    direct.add_member(stale, addr)
                except (NotLeaderError, ReadTimeout, UnknownOutcome):
                    return  # an honest answer: the caller goes on to the leader
            members = client.members()
        assert stale in {**members["voters"], **members["learners"]}, (
            f"add_member({stale!r}) was acknowledged but the leader's membership is {members}"
        )
    finally:
        cluster.close()


@pytest.mark.process
def test_supervisor_restarts_a_crashed_node_and_disk_damage_waits_for_it(out_dir: Path) -> None:
    """The 30-minute run lost a node to a libzmq abort nobody noticed; two disk faults
    later the cluster had no quorum. Crashes are now logged and restarted, and disk
    damage only strikes a cluster whose every node runs and votes."""
    cluster = NemesisCluster(3, base_dir=out_dir / "c")
    log = FaultLog()
    nem = Nemesis(cluster, ["kill", "disk"], random.Random(3), log)
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=30)
        victim = "n2"
        proc = cluster.nodes[victim].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGABRT)  # what a failed C assertion does
        assert proc.wait(timeout=15) == -signal.SIGABRT
        assert nem._fault_disk(random.Random(1)) is None, "no damage while a node is down"
        assert log.events[-1]["action"] == "skipped" and "n2" in log.events[-1]["reason"]
        assert nem.check_crashes() == [victim]
        assert cluster.nodes[victim].alive() and cluster.nodes[victim].pid != proc.pid
        [crash] = log.crashes()
        assert crash["node"] == victim and crash["exit_code"] == -signal.SIGABRT
        killed = "n3"
        cluster.kill(killed, signal.SIGKILL)
        nem.down.add(killed)  # the nemesis's own kill: restarted at heal, not as a crash
        assert nem.check_crashes() == []
        assert not cluster.nodes[killed].alive()
        nem.heal_all()
        assert cluster.nodes[killed].alive()
        assert log.counts() == {"crash": 1}
    finally:
        cluster.close()


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (to assert on, never to kill by)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline and b"zraft.cli" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.process
def test_sigterm_stops_the_nemesis_and_ends_every_node(out_dir: Path) -> None:
    """A stopped gauntlet once kept its nemesis running, restarting nodes after it had
    ended them; SIGTERM must heal, end every node by PID and exit."""
    cmd = [sys.executable, str(GAUNTLET), "--time", "120", "--nemesis", "kill,pause"]
    cmd += ["--seed", "5", "--out", str(out_dir), "--concurrency", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    leaked: list[int] = []
    try:
        deadline = time.monotonic() + 60
        log = out_dir / "nemesis.jsonl"
        while time.monotonic() < deadline and not (log.exists() and log.stat().st_size > 0):
            time.sleep(0.2)  # process-level test: wait (bounded) for the first fault
        assert log.exists(), "no fault within 60 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=150)
        assert proc.returncode != 0 and b"Traceback" not in err, err.decode()[-2000:]
        leaked = _processes_mentioning(str(out_dir))
        assert not leaked, f"node processes outlived the gauntlet: {leaked}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in leaked or _processes_mentioning(str(out_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
