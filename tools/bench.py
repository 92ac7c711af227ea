#!/usr/bin/env python3
"""Benchmark zraft against PySyncObj, side by side, on this machine's loopback.

Every measurement starts fresh clusters (real processes, 127.0.0.1 only), runs
the load from separate worker processes (``bench_load.py`` for zraft,
``bench_pysyncobj.py load`` for PySyncObj: the same pipelined engine), and ends
every process by PID and removes every temp dir. Systems alternate within each
round (zraft, pysyncobj, zraft, ...) so slow drifts of a shared machine hit
both. zraft is durable by default (``--fsync always``); PySyncObj runs in its
default in-memory mode and never fsyncs.

Example (the real measurement; takes a while)::

    .venv/bin/python tools/bench.py --rounds 3 --duration 10 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_load  # sibling scripts, not a package
import bench_pysyncobj

from zraft import metrics
from zraft.launcher import LocalCluster

TOOLS = Path(__file__).resolve().parent
SCENARIOS = (
    "clients", "batched", "scale", "embedded", "sequential", "half-load", "overload",
    "failover", "memory",
)  # fmt: skip
START_DELAY_S = 1.5  #: time for worker processes to start and connect before the shared start
STARTUP_TIMEOUT_S = 60.0
MAX_PROCS = 64
MAX_ROUNDS = 100
COLUMNS = ("scenario", "system", "payload", "ops/s", "p50", "p90", "p99", "max", "ratio", "notes")


@dataclass(frozen=True)
class Variant:
    """One system configuration: zraft with an fsync mode, or PySyncObj with a batch mode."""

    kind: str  # "zraft" | "pysyncobj"
    fsync: str = "always"
    batch: str = "auto"  # PySyncObj appendEntriesUseBatch: "on" | "off" | "auto"

    def batch_on(self, scenario: str) -> bool:
        """auto: PySyncObj defaults (batched) for throughput; no batching for single ops."""
        if self.batch == "auto":
            return scenario not in ("sequential", "failover")
        return self.batch == "on"

    def label(self, scenario: str) -> str:
        if self.kind == "zraft":
            return f"zraft/fsync={self.fsync}"
        return f"pysyncobj/batch={'on' if self.batch_on(scenario) else 'off'}"


# ---------------------------------------------------------------------------- clusters


class Target:
    """A running cluster of one system, as the benchmark needs it."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def leader(self, exclude: str | None = None) -> str:
        raise NotImplementedError

    def endpoint(self, node_id: str) -> str:
        raise NotImplementedError

    def node_ids(self) -> list[str]:
        raise NotImplementedError

    def worker_cmd(self) -> list[str]:
        raise NotImplementedError

    def proto(self) -> bench_load.LoadProtocol:
        raise NotImplementedError

    def sample(self) -> tuple[str, int]:
        """(leader id or "", highest term) right now."""
        raise NotImplementedError

    def role_changes(self) -> int:
        raise NotImplementedError

    def disk_usage(self) -> tuple[int, int]:
        """(apparent, allocated) bytes on disk: 0 for an in-memory system."""
        return 0, 0

    def kill(self, node_id: str) -> None:
        raise NotImplementedError

    def restart(self, node_id: str) -> None:
        raise NotImplementedError

    def caught_up(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def server_metrics(self) -> dict[str, dict[str, Any]]:
        """Node id -> its own latency histograms (zraft's status()["metrics"]); {} if none."""
        return {}

    def pids(self) -> dict[str, int]:
        """Node id -> PID of each running node process (for RSS and CPU sampling)."""
        nodes = self.cluster.nodes  # type: ignore[attr-defined]
        return {nid: n.proc.pid for nid, n in nodes.items() if n.proc is not None}

    def endpoints_leader_first(self) -> list[str]:
        lead = self.leader()
        return [self.endpoint(lead)] + [self.endpoint(n) for n in self.node_ids() if n != lead]


class ZraftTarget(Target):
    def __init__(self, runner: Runner, nodes: int, fsync: str, start: bool = True) -> None:
        super().__init__(runner)
        self.cluster = LocalCluster(nodes, fsync=fsync, config_toml=runner.args.zraft_config)
        if start:
            self.cluster.start()

    def leader(self, exclude: str | None = None) -> str:
        return self.cluster.wait_for_leader(STARTUP_TIMEOUT_S, exclude=exclude)

    def endpoint(self, node_id: str) -> str:
        return self.cluster.nodes[node_id].address

    def node_ids(self) -> list[str]:
        return list(self.cluster.nodes)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, str(TOOLS / "bench_load.py"), "client"]

    def proto(self) -> bench_load.LoadProtocol:
        return bench_load.ZraftProtocol()

    def sample(self) -> tuple[str, int]:
        sts = self.cluster.statuses(timeout=0.5)
        leaders = [n for n, s in sts.items() if s.get("role") == "leader"]
        return (leaders[0] if len(leaders) == 1 else ""), max(
            (int(s.get("term", 0)) for s in sts.values()), default=0
        )

    def server_metrics(self) -> dict[str, dict[str, Any]]:
        sts = self.cluster.statuses(timeout=2.0)
        if len(sts) < len(self.cluster.nodes):  # a busy node can miss one status call
            sts = {**self.cluster.statuses(timeout=5.0), **sts}
        return {
            nid: {"role": st.get("role"), **st["metrics"]}
            for nid, st in sts.items()
            if "metrics" in st
        }

    def role_changes(self) -> int:
        """``role_change`` events in the nodes' JSON logs so far."""
        count = 0
        for path in (self.cluster.base_dir / "logs").glob("*.jsonl"):
            with open(path, encoding="utf-8", errors="replace") as f:
                count += sum(1 for line in f if '"role_change"' in line)
        return count

    def disk_usage(self) -> tuple[int, int]:
        """(apparent bytes, allocated bytes) of all data dirs: segments may be preallocated."""
        size = alloc = 0
        for node in self.cluster.nodes.values():
            for root, _dirs, files in os.walk(node.data_dir):
                for name in files:
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(root, name))
                        size += st.st_size
                        alloc += st.st_blocks * 512
        return size, alloc

    def kill(self, node_id: str) -> None:
        self.cluster.kill(node_id, signal.SIGKILL)

    def restart(self, node_id: str) -> None:
        self.cluster.start(node_id)

    def caught_up(self) -> bool:
        sts = self.cluster.statuses(timeout=0.5)
        if len(sts) < len(self.cluster.nodes):
            return False
        commit = max(int(s.get("commit", 0)) for s in sts.values())
        return all(int(s.get("applied", -1)) >= commit for s in sts.values())

    def close(self) -> None:
        keep = self.runner.args.keep_logs
        if keep:  # the node logs (slow_turn warnings, elections) outlive the cluster
            self.runner.kept += 1
            dest = Path(keep) / f"zraft-{self.runner.kept:03d}"
            shutil.copytree(self.cluster.base_dir / "logs", dest, dirs_exist_ok=True)
        self.cluster.close()


class PsoTarget(Target):
    def __init__(self, runner: Runner, nodes: int, batch: bool, extra: list[str] | None = None):
        super().__init__(runner)
        self.cluster = bench_pysyncobj.PsoCluster(nodes, batch=batch, extra_args=extra)
        self.cluster.start()

    def leader(self, exclude: str | None = None) -> str:
        return self.cluster.wait_for_leader(STARTUP_TIMEOUT_S)

    def endpoint(self, node_id: str) -> str:
        return self.cluster.nodes[node_id].front

    def node_ids(self) -> list[str]:
        return list(self.cluster.nodes)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, str(TOOLS / "bench_pysyncobj.py"), "load"]

    def proto(self) -> bench_load.LoadProtocol:
        return bench_pysyncobj.PsoProtocol()

    def sample(self) -> tuple[str, int]:
        sts = self.cluster.statuses(timeout_s=0.5)
        leaders = [n for n, s in sts.items() if s["role"] == "leader"]
        return (leaders[0] if len(leaders) == 1 else ""), max(
            (int(s["term"]) for s in sts.values()), default=0
        )

    def role_changes(self) -> int:
        return sum(int(s["state_changes"]) for s in self.cluster.statuses(0.5).values())

    def kill(self, node_id: str) -> None:
        self.cluster.kill(node_id, signal.SIGKILL)

    def restart(self, node_id: str) -> None:
        self.cluster.start(node_id)

    def caught_up(self) -> bool:
        sts = self.cluster.statuses(0.5)
        if len(sts) < len(self.cluster.nodes):
            return False
        commit = max(int(s["commit"]) for s in sts.values())
        return all(int(s["applied"]) >= commit for s in sts.values())

    def close(self) -> None:
        self.cluster.close()


# ---------------------------------------------------------------------------- results


def percentile(sorted_us: list[int], q: float) -> float | None:
    """Nearest-rank percentile in ms of sorted microsecond samples."""
    if not sorted_us:
        return None
    rank = max(0, min(len(sorted_us) - 1, math.ceil(q / 100 * len(sorted_us)) - 1))
    return sorted_us[rank] / 1000


def merge_workers(parts: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Sum the workers' counts, pool their latency samples, add their timelines."""
    samples = sorted(s for p in parts for s in p.get("samples_us", []))
    errors: dict[str, int] = {}
    timeline: dict[float, list[float]] = {}
    for p in parts:
        for k, v in p.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + int(v)
        tl = p.get("timeline", {})
        for t, n, mean in zip(
            tl.get("t_s", []), tl.get("count", []), tl.get("mean_us", []), strict=True
        ):
            cell = timeline.setdefault(float(t), [0.0, 0.0])
            cell[0] += n
            cell[1] += n * mean
    ok = sum(int(p.get("ok", 0)) for p in parts)
    keys = sorted(timeline)
    bucket_s = bench_load.BUCKET_S
    return {
        "ok": ok,
        "sent": sum(int(p.get("sent", 0)) for p in parts),
        "unsent": sum(int(p.get("unsent", 0)) for p in parts),
        "errors": errors,
        "ops_s": ok / duration_s,
        "p50_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "p99_ms": percentile(samples, 99),
        "max_ms": max((int(p.get("max_us", 0)) for p in parts), default=0) / 1000 or None,
        "timeline": {
            "t_s": keys,
            "ops_s": [timeline[k][0] / bucket_s for k in keys],
            "mean_ms": [timeline[k][1] / max(1.0, timeline[k][0]) / 1000 for k in keys],
        },
    }


def server_window(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What the nodes saw during the load, from two readings of their histograms: the
    slowest node's log fsync p99, the leader's reactor turn p99, mean append batch and
    p99 of a client command from its request to its reply (the leader's share of the
    latency the load generator measures: no network, no wait in the socket),
    and the longest turn and fsync of any node (the upper bound of its log-2 bucket):
    a stall shorter than 1% of the run hides under the p99s but not under these."""
    out: dict[str, Any] = {}
    fsync_p99, fsync_max, turn_max = [], [], []
    for nid, m in after.items():
        b = before.get(nid, {})

        def win(key: str, m: dict[str, Any] = m, b: dict[str, Any] = b) -> metrics.Histogram:
            return metrics.window(b.get(key, {}), m[key])

        fsync = win("log_fsync")
        if fsync.count():
            fsync_p99.append(fsync.percentile(0.99) / 1000)
            fsync_max.append(fsync.max / 1000)
        turns = win("turn")
        if turns.count():
            turn_max.append(turns.max / 1000)
        if m.get("role") == "leader":
            batch = win("append_batch")
            appends = batch.count()
            out["leader_turn_p99_ms"] = turns.percentile(0.99) / 1000
            out["leader_batch_mean"] = round(batch.total / appends, 1) if appends else 0
            out["leader_turns_per_append"] = round(turns.count() / appends, 2) if appends else None
            if "command" in m:
                commands = win("command")
                if commands.count():
                    out["leader_command_p99_ms"] = commands.percentile(0.99) / 1000
    if fsync_p99:
        out["fsync_p99_ms"] = max(fsync_p99)
        out["fsync_max_ms"] = max(fsync_max)
    if turn_max:
        out["turn_max_ms"] = max(turn_max)
    return out


def _embedded_result(parts: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """The leader's own report: start-up elections and hand-overs are not the load's."""
    res = merge_workers(parts, duration_s)
    if parts:
        res["term_delta"] = parts[0].get("terms_during_load")
        if not parts[0].get("leader_at_end", True):
            res["errors"]["lost_leadership"] = 1
    return res


class Monitor:
    """Samples (leader, term) every half second while a load runs: leader changes."""

    def __init__(self, sample: Callable[[], tuple[str, int]]) -> None:
        self.sample = sample
        self.points: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.points.append(self.sample())
            self._stop.wait(0.5)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any]:
        leaders = [lead for lead, _ in self.points if lead]
        changes = sum(1 for a, b in itertools.pairwise(leaders) if a != b)
        terms = [t for _, t in self.points if t]
        return {"leader_changes": changes, "term_delta": (max(terms) - min(terms)) if terms else 0}


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (None if it is gone or this is not Linux)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used, from /proc (None if gone or not Linux)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()  # the name may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


class CpuSampler(Monitor):
    """Samples some processes' total CPU time twice a second while a load runs: CPU per
    committed op is steadier than latency from run to run on a shared VM. The nodes',
    and the load generators' (on the same cores, they take CPU the nodes could use)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.series: list[tuple[float, float]] = []  #: (wall time, CPU seconds of all of them)

        def sample() -> tuple[str, int]:
            used = [cpu_seconds(pid) for pid in pids.values()]
            if used and None not in used:
                self.series.append((time.time(), sum(u or 0.0 for u in used)))
            return "", 0

        super().__init__(sample)

    def per_op(
        self, measure_from: float, measure_to: float, ops_s: float, key: str = "cpu_us_op"
    ) -> dict[str, Any]:
        """CPU microseconds per committed op over the measured window: the rate
        between the last sample at or before its start and the first at or after its
        end (the nearest ones inside when the sampler missed an edge)."""
        pts = self.series
        if len(pts) < 2 or not ops_s:
            return {}
        starts = [p for p in pts if p[0] <= measure_from] or pts[:1]
        ends = [p for p in pts if p[0] >= measure_to] or pts[-1:]
        (t0, c0), (t1, c1) = starts[-1], ends[0]
        if t1 - t0 < 0.4:
            return {}
        return {key: round((c1 - c0) / (t1 - t0) / ops_s * 1e6, 1)}


class RssSampler(Monitor):
    """Samples every node's resident memory twice a second while a load runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.series: dict[str, list[int]] = {nid: [] for nid in pids}

        def sample() -> tuple[str, int]:
            for nid, pid in pids.items():
                if (rss := rss_bytes(pid)) is not None:
                    self.series[nid].append(rss)
            return "", 0

        super().__init__(sample)

    def summary(self) -> dict[str, Any]:
        """The biggest node's RSS early (first fifth), late (last fifth) and at its peak."""
        best: dict[str, Any] = {}
        for nid, xs in self.series.items():
            if len(xs) < 3:
                continue
            fifth = max(1, len(xs) // 5)
            row = {
                "rss_node": nid,
                "rss_early_mb": round(statistics.median(xs[:fifth]) / 2**20, 1),
                "rss_late_mb": round(statistics.median(xs[-fifth:]) / 2**20, 1),
                "rss_max_mb": round(max(xs) / 2**20, 1),
            }
            if not best or row["rss_max_mb"] > best["rss_max_mb"]:
                best = row
        return best


# ---------------------------------------------------------------------------- the runner


class Runner:
    """Runs every (round, scenario, payload, variant) and keeps the result rows."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args, self.work_dir = args, work_dir
        self.rows: list[dict[str, Any]] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._seq = 0
        self.kept = 0  #: zraft clusters whose logs --keep-logs copied

    # -- processes

    def spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.work_dir / "workers.stderr", "ab") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self._procs.append(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        """Wait for a worker; past ``timeout_s`` end it by PID."""
        try:
            proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._procs.remove(proc)

    def end_all(self) -> None:
        for proc in list(self._procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            self._procs.remove(proc)

    def out_path(self) -> Path:
        self._seq += 1
        return self.work_dir / f"result-{self._seq}.json"

    @contextlib.contextmanager
    def target(self, v: Variant, scenario: str, nodes: int) -> Iterator[Target]:
        t: Target
        if v.kind == "zraft":
            t = ZraftTarget(self, nodes, v.fsync)
        else:
            t = PsoTarget(self, nodes, v.batch_on(scenario))
        try:
            yield t
        finally:
            t.close()

    # -- load from separate processes

    def load_args(
        self,
        payload: int,
        window: int,
        rate: float,
        start_at: float,
        duration_s: float = 0.0,
        batch: int = 1,
    ) -> list[str]:
        a = self.args
        return [
            "--batch", str(batch),
            "--start-at", f"{start_at:.3f}", "--duration", str(duration_s or a.duration),
            "--warmup", str(a.warmup), "--payload", str(payload), "--window", str(window),
            "--rate", f"{rate:.1f}", "--keys", str(a.keys),
        ]  # fmt: skip

    def client_load(
        self,
        t: Target,
        payload: int,
        procs: int,
        window: int,
        rate_total: float = 0.0,
        duration_s: float = 0.0,
        batch: int = 1,
    ) -> dict[str, Any]:
        """``procs`` worker processes against the leader; merged result plus cluster facts."""
        duration_s = duration_s or self.args.duration
        endpoints = ",".join(t.endpoints_leader_first())
        start_at = time.time() + START_DELAY_S + 0.2 * procs
        outs, workers = [], []
        role_changes_before = t.role_changes()
        for i in range(procs):
            out = self.out_path()
            cmd = [*t.worker_cmd(), "--endpoints", endpoints, "--out", str(out)]
            cmd += self.load_args(payload, window, rate_total / procs, start_at, duration_s, batch)
            cmd += ["--worker", str(i), "--seed", str(i + 1)]
            workers.append(self.spawn(cmd))
            outs.append(out)
        metrics_before = t.server_metrics()
        with (
            Monitor(t.sample) as mon,
            RssSampler(t.pids()) as rss,
            CpuSampler(t.pids()) as cpu,
            CpuSampler({str(i): w.pid for i, w in enumerate(workers)}) as load_cpu,
        ):
            end = start_at + self.args.warmup + duration_s + bench_load.DRAIN_S + 30
            for w in workers:
                self.reap(w, end - time.time())
        parts = [json.loads(o.read_text()) for o in outs if o.exists()]
        res = merge_workers(parts, duration_s)
        res.update(mon.summary())
        res.update(rss.summary())
        measure_from = start_at + self.args.warmup
        res.update(cpu.per_op(measure_from, measure_from + duration_s, res["ops_s"]))
        res.update(
            load_cpu.per_op(measure_from, measure_from + duration_s, res["ops_s"], "load_cpu_us_op")
        )
        res.update(server_window(metrics_before, t.server_metrics()))
        res["role_changes"] = t.role_changes() - role_changes_before
        res["workers_reported"] = f"{len(parts)}/{procs}"
        res["offered_ops_s"] = rate_total or None
        res["client_procs"], res["window_per_proc"] = procs, window
        res["disk_bytes"], res["disk_alloc_bytes"] = t.disk_usage()
        return res

    def run_clients(self, v: Variant, scenario: str, payload: int, nodes: int) -> dict[str, Any]:
        a = self.args
        with self.target(v, scenario, nodes) as t:
            t.leader()
            if scenario == "sequential":
                return self.client_load(t, payload, 1, 1)
            if scenario == "batched":  # Client.apply_many: many puts per frame
                return self.client_load(
                    t, payload, a.client_procs, a.batch_window, batch=a.batch_size
                )
            if scenario == "memory":  # a long run: does any node's RSS grow with the log?
                return self.client_load(
                    t, payload, a.client_procs, a.window, duration_s=a.memory_duration
                )
            if scenario == "half-load":
                # the paced load comes from --half-load-procs processes with the same total
                # in-flight cap as the peak probe's --client-procs
                procs = a.half_load_procs
                window = max(1, a.window * a.client_procs // procs)
                rate = a.paced_rate or 0.5 * self.peak(t, v, payload)
                return self.client_load(t, payload, procs, window, rate)
            if scenario == "overload":
                peak = self.peak(t, v, payload)
                return self.client_load(t, payload, a.client_procs, a.overload_window, 3 * peak)
            return self.client_load(t, payload, a.client_procs, a.window)

    def peak(self, t: Target, v: Variant, payload: int) -> float:
        """Closed-loop throughput of this very cluster, measured just before the paced load.

        A peak from minutes earlier (another cluster, another moment of a shared VM)
        made "half of peak" anything from 40% to 70% of what the machine could do.
        """
        res = self.client_load(t, payload, self.args.client_procs, self.args.window)
        self.record("peak-probe", v, payload, 3, res)
        return max(1.0, float(res.get("ops_s") or 0.0))

    # -- embedded load (inside the leader's process)

    def run_embedded(self, v: Variant, payload: int) -> dict[str, Any]:
        a = self.args
        window = a.embedded_window
        load = self.load_args(payload, window, 0.0, 0.0)
        limit_s = 2 * STARTUP_TIMEOUT_S + a.warmup + a.duration + bench_load.DRAIN_S
        if v.kind == "pysyncobj":
            prefix = self.work_dir / f"embedded-{self._seq}"
            self._seq += 1
            extra = ["--embedded-out", str(prefix), *load]
            t: Target = PsoTarget(self, 3, v.batch_on("embedded"), extra)
            try:
                parts = self._await_files(prefix, limit_s)
                return _embedded_result(parts, a.duration)
            finally:
                t.close()
        z = ZraftTarget(self, 3, v.fsync, start=False)
        try:
            for nid in list(z.cluster.nodes)[1:]:
                z.cluster.start(nid)
            n1 = z.cluster.nodes["n1"]
            n1.data_dir.mkdir(parents=True, exist_ok=True)
            out = self.out_path()
            cmd = [sys.executable, str(TOOLS / "bench_load.py"), "embedded", "--id", "n1"]
            cmd += ["--cluster", z.cluster.cluster_spec, "--data-dir", str(n1.data_dir)]
            cmd += ["--fsync", v.fsync, "--log-file", str(n1.log_file), "--out", str(out)]
            cmd += ["--config", a.zraft_config] if a.zraft_config else []
            self.reap(self.spawn(cmd + load), limit_s)
            parts = [json.loads(out.read_text())] if out.exists() else []
            res = _embedded_result(parts, a.duration)
            res["disk_bytes"], res["disk_alloc_bytes"] = z.disk_usage()
            return res
        finally:
            z.close()

    def _await_files(self, prefix: Path, limit_s: float) -> list[dict[str, Any]]:
        """The leader's embedded result (followers write a stub saying they did not load)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for path in prefix.parent.glob(prefix.name + ".*.json"):
                data = json.loads(path.read_text())
                if data.get("role") == "leader":
                    return [data]
            time.sleep(0.2)  # polling another process's output file, bounded by the deadline
        return []

    # -- failover

    def run_failover(self, v: Variant) -> dict[str, Any]:
        """Per trial: SIGKILL the leader; time until a write commits on a survivor."""
        a = self.args
        times_ms: list[float] = []
        failures = 0
        with self.target(v, "failover", 3) as t:
            for _ in range(a.trials):
                lead = t.leader()
                proto = t.proto()
                if bench_load.probe_write(proto, [t.endpoint(lead)], 10.0) is None:
                    failures += 1
                    continue
                survivors = [t.endpoint(n) for n in t.node_ids() if n != lead]
                t0 = time.perf_counter()
                t.kill(lead)
                hit = bench_load.probe_write(proto, survivors, a.failover_timeout)
                if hit is None:
                    failures += 1
                else:
                    times_ms.append((hit[0] - t0) * 1000)
                t.restart(lead)
                self._wait(t.caught_up, STARTUP_TIMEOUT_S)
        s = sorted(int(x * 1000) for x in times_ms)
        return {
            "ops_s": None,
            "p50_ms": percentile(s, 50),
            "p90_ms": percentile(s, 90),
            "p99_ms": percentile(s, 99),
            "max_ms": max(times_ms) if times_ms else None,
            "trials_ms": [round(x, 1) for x in times_ms],
            "errors": {"failed_trials": failures} if failures else {},
        }

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if cond():
                    return True
            time.sleep(0.1)  # polling a cluster's status, bounded by the deadline
        return False

    # -- the plan

    def record(
        self, scenario: str, v: Variant, payload: int, nodes: int, res: dict[str, Any]
    ) -> None:
        row = {"round": self.round, "scenario": scenario, "system": v.label(scenario)}
        row.update({"kind": v.kind, "payload": payload, "nodes": nodes, **res})
        self.rows.append(row)
        brief = {k: row.get(k) for k in ("ops_s", "p50_ms", "p99_ms", "errors")}
        print(f"  [{self.round}] {scenario} {row['system']} {payload}B: {brief}", file=sys.stderr)

    def run_one(self, scenario: str, v: Variant, payload: int) -> None:
        if scenario == "scale":
            for nodes in (3, 5):
                self.record(f"scale-{nodes}n", v, payload, nodes,
                            self.run_clients(v, scenario, payload, nodes))  # fmt: skip
        elif scenario == "embedded":
            self.record(scenario, v, payload, 3, self.run_embedded(v, payload))
        elif scenario == "failover":
            self.record(scenario, v, payload, 3, self.run_failover(v))
        elif scenario == "batched" and v.kind != "zraft":
            return  # PySyncObj has no client protocol to batch: its rows are "clients"
        else:
            self.record(scenario, v, payload, 3, self.run_clients(v, scenario, payload, 3))

    def run(self, variants: list[Variant]) -> None:
        a = self.args
        scenarios = [s for s in SCENARIOS if s in a.scenario]
        for self.round in range(1, a.rounds + 1):
            for scenario in scenarios:
                payloads = a.payload[:1] if scenario == "failover" else a.payload
                for payload in payloads:
                    for v in variants:
                        try:
                            self.run_one(scenario, v, payload)
                        except Exception as exc:  # one broken run must not lose the others
                            print(f"  {scenario} {v.label(scenario)}: {exc!r}", file=sys.stderr)
                            self.record(scenario, v, payload, 3, {"failed": repr(exc)})
                        finally:
                            self.end_all()

    round = 0


# ---------------------------------------------------------------------------- report


def _median(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds per (scenario, system, payload); ratio against PySyncObj's best."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["scenario"] != "peak-probe":
            groups.setdefault((r["scenario"], r["system"], r["payload"]), []).append(r)
    out = []
    for (scenario, system, payload), rs in groups.items():
        s: dict[str, Any] = {"scenario": scenario, "system": system, "payload": payload}
        s["kind"] = rs[0]["kind"]
        for k in ("ops_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "offered_ops_s"):
            s[k] = _median([r.get(k) for r in rs])
        for k in (
            "leader_changes",
            "term_delta",
            "role_changes",
            "disk_bytes",
            "disk_alloc_bytes",
            "client_procs",
        ):
            s[k] = _median([r.get(k) for r in rs])
        for k in (
            "rss_early_mb",
            "rss_late_mb",
            "rss_max_mb",
            "cpu_us_op",
            "load_cpu_us_op",
            "fsync_p99_ms",
            "leader_turn_p99_ms",
            "leader_batch_mean",
            "leader_turns_per_append",
            "leader_command_p99_ms",
        ):
            s[k] = _median([r.get(k) for r in rs])
        for k in ("turn_max_ms", "fsync_max_ms"):  # the worst round: a stall is the point
            s[k] = max((r[k] for r in rs if r.get(k) is not None), default=None)
        errors: dict[str, int] = {}
        for r in rs:
            for e, n in (r.get("errors") or {}).items():
                errors[e] = errors.get(e, 0) + n
        s["errors"] = errors
        s["runs"] = len(rs)
        s["failed_runs"] = sum(1 for r in rs if "failed" in r)
        out.append(s)
    for s in out:
        s["ratio"] = _ratio(s, out)
    return out


def _ratio(s: dict[str, Any], summary: list[dict[str, Any]]) -> float | None:
    """zraft ÷ best PySyncObj ops/s; for failover, zraft p50 ÷ best PySyncObj p50 (time)."""
    if s["kind"] != "zraft":
        return None
    against = "clients" if s["scenario"] == "batched" else s["scenario"]
    peers = [
        p
        for p in summary
        if p["kind"] == "pysyncobj" and (p["scenario"], p["payload"]) == (against, s["payload"])
    ]
    if s["scenario"] == "failover":
        best = min((p["p50_ms"] for p in peers if p["p50_ms"]), default=None)
        return s["p50_ms"] / best if best and s["p50_ms"] else None
    best = max((p["ops_s"] for p in peers if p["ops_s"]), default=None)
    return s["ops_s"] / best if best and s["ops_s"] else None


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _notes(s: dict[str, Any]) -> str:
    parts = []
    if s["errors"]:
        parts.append("errors " + ",".join(f"{k}={v}" for k, v in sorted(s["errors"].items())))
    if s.get("offered_ops_s"):
        procs = s.get("client_procs") or 0
        parts.append(f"offered {s['offered_ops_s']:.0f}/s by {procs:.0f} client proc(s)")
    if s.get("term_delta"):
        parts.append(f"terms+{s['term_delta']:.0f}")
    if s.get("role_changes"):
        parts.append(f"role_changes {s['role_changes']:.0f}")
    if s.get("cpu_us_op"):
        parts.append(f"cpu {s['cpu_us_op']:.0f}us/op")
    if s.get("load_cpu_us_op"):
        parts.append(f"load cpu {s['load_cpu_us_op']:.0f}us/op")
    if s.get("leader_turn_p99_ms") is not None:
        parts.append(
            f"turn p99 {s['leader_turn_p99_ms']:.1f}ms, fsync p99 {s['fsync_p99_ms'] or 0:.1f}ms,"
            f" batch {s['leader_batch_mean']:.0f}"
        )
    if s.get("leader_command_p99_ms") is not None:
        parts.append(f"leader command p99 <={s['leader_command_p99_ms']:.1f}ms")
    if s.get("turn_max_ms") is not None:
        parts.append(f"max turn <={s['turn_max_ms']:.0f}ms, fsync <={s['fsync_max_ms'] or 0:.0f}ms")
    if s.get("rss_max_mb"):
        parts.append(f"rss {s['rss_early_mb']:.0f}->{s['rss_late_mb']:.0f}MB")
    if s.get("disk_bytes"):
        parts.append(f"disk {s['disk_bytes'] / 1e6:.1f}MB")
    if s.get("disk_alloc_bytes"):
        parts.append(f"alloc {s['disk_alloc_bytes'] / 1e6:.1f}MB")
    if s["failed_runs"]:
        parts.append(f"FAILED {s['failed_runs']}/{s['runs']}")
    return "; ".join(parts)


def table(summary: list[dict[str, Any]]) -> str:
    from zraft.cli import format_table

    order = {name: i for i, name in enumerate(SCENARIOS)}
    rows = []

    def key(s: dict[str, Any]) -> tuple[Any, ...]:
        base = s["scenario"].split("-")[0]
        return (order.get(base, 99), s["scenario"], s["payload"], s["kind"] != "zraft")

    for s in sorted(summary, key=key):
        rows.append({
            "scenario": s["scenario"], "system": s["system"], "payload": f"{s['payload']}B",
            "ops/s": _fmt(s["ops_s"], 0), "p50": _fmt(s["p50_ms"]), "p90": _fmt(s["p90_ms"]),
            "p99": _fmt(s["p99_ms"]), "max": _fmt(s["max_ms"]), "ratio": _fmt(s["ratio"], 2),
            "notes": _notes(s),
        })  # fmt: skip
    return format_table(rows, list(COLUMNS))


def python_probe_us(sleep_s: float = 0.0, reps: int = 200) -> float:
    """Median microseconds of a fixed bit of pure-Python work, each run after ``sleep_s``.

    Two readings describe a machine better than its CPU model: warm (``sleep_s=0``), how
    fast the host is right now (a shared VM drifts by half from one minute to the next);
    after a short sleep, what a wake-up costs. A node wakes hundreds of times a second,
    and on some VMs work run right after a sleep takes several times as long as warm.
    """

    def work() -> int:
        d: dict[int, int] = {}
        for i in range(300):
            d[i & 63] = d.get(i & 63, 0) + i
        return len(str(d))

    work()
    times = []
    for _ in range(reps):
        if sleep_s:
            time.sleep(sleep_s)  # the thing measured: the cost of resuming after a sleep
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 1)


def zmq_send_probe_us(idle_s: float, reps: int = 200) -> float:
    """Median microseconds one ZeroMQ send of a small frame takes after ``idle_s``.

    A send hands the frame to ZeroMQ's I/O thread; if that thread sleeps, waking it
    (and, on a busy core, yielding to it) is paid by the sender: the cost every node
    pays per message at low load. Loopback TCP inside this process, as the nodes use.
    """
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        frame = b"x" * 256
        push.send(frame)
        pull.recv()  # connected both ways before timing anything
        times = []
        for _ in range(reps):
            if idle_s:
                time.sleep(idle_s)
            t0 = time.perf_counter()
            push.send(frame)
            times.append(time.perf_counter() - t0)
            pull.recv()
        return round(statistics.median(times) * 1e6, 1)
    finally:
        ctx.destroy(linger=0)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "python_probe_warm_us": python_probe_us(),
        "python_probe_after_3ms_sleep_us": python_probe_us(0.003),
        "zmq_send_warm_us": zmq_send_probe_us(0.0),
        "zmq_send_after_3ms_idle_us": zmq_send_probe_us(0.003),
    }


NOTES = [
    "latencies in ms (p50/p90/p99/max of ops completed in the measured window)",
    "ratio = zraft ops/s / best PySyncObj ops/s "
    "(failover: zraft p50 / PySyncObj p50, lower is better; batched: against PySyncObj's "
    "clients row, as it has no client protocol to batch)",
    "PySyncObj runs in its default in-memory mode: it never fsyncs; zraft fsyncs per batch "
    "when fsync=always",
    "PySyncObj batch=on is its default appendEntriesUseBatch=True (entries go out with the "
    "next 100 ms appendEntriesPeriod); batch=off sends AppendEntries per command",
    "election timeouts: zraft 500-1000 ms (50 ms tick x 10-20, pre-vote); PySyncObj 0.4-1.4 s",
]


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Throughput and mean latency over time per run; silently skipped without matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for r in rows:
        tl = r.get("timeline")
        if not tl or not tl["t_s"]:
            continue
        label = f"r{r['round']} {r['scenario']} {r['system']} {r['payload']}B"
        ax1.plot(tl["t_s"], tl["ops_s"], label=label, linewidth=0.8)
        ax2.plot(tl["t_s"], tl["mean_ms"], label=label, linewidth=0.8)
    ax1.set_ylabel("committed ops/s")
    ax2.set_ylabel("mean latency (ms)")
    ax2.set_xlabel("seconds since the measured window began")
    ax1.legend(fontsize=5, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default all")
    p.add_argument("--payload", action="append", type=int, help="value bytes; default 10 and 1024")
    p.add_argument("--systems", default="zraft,pysyncobj", help="comma-separated")
    p.add_argument(
        "--fsync", action="append", choices=["always", "never"], help="zraft; repeatable"
    )
    p.add_argument(
        "--pso-batch",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="PySyncObj appendEntriesUseBatch; auto = on, but off for sequential/failover",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--window", type=int, default=64, help="outstanding ops per client process")
    p.add_argument(
        "--half-load-procs",
        type=int,
        default=1,
        help="half-load: client processes offering the paced load (the peak probe uses"
        " --client-procs); one client, as the target reads, and the least load-generator"
        " CPU beside the nodes",
    )
    p.add_argument("--batch-size", type=int, default=64, help="puts per frame, batched")
    p.add_argument("--batch-window", type=int, default=1024, help="per process, batched")
    p.add_argument("--overload-window", type=int, default=8192, help="per process, overload")
    p.add_argument(
        "--embedded-window",
        type=int,
        default=16384,
        help="outstanding ops inside the leader (PySyncObj batches per 100 ms: it needs many;"
        " 16384 is where it did best on our machine)",
    )
    p.add_argument("--keys", type=int, default=1000, help="distinct keys per worker")
    p.add_argument("--trials", type=int, default=5, help="failover trials")
    p.add_argument(
        "--memory-duration", type=float, default=60.0, help="measured seconds, memory scenario"
    )
    p.add_argument("--failover-timeout", type=float, default=30.0)
    p.add_argument("--zraft-config", default=None, help="zraft.toml for every zraft node")
    p.add_argument(
        "--paced-rate",
        type=float,
        default=0.0,
        help="half-load: offer this many ops/s in all instead of half a fresh peak probe",
    )
    p.add_argument("--keep-logs", default=None, help="copy each zraft cluster's node logs here")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--plot", default=None, help="PNG of throughput/latency over time")
    args = p.parse_args(argv)
    args.scenario = args.scenario or list(SCENARIOS)
    args.payload = args.payload or [10, 1024]
    args.fsync = args.fsync or ["always"]
    if not (1 <= args.rounds <= MAX_ROUNDS and 1 <= args.client_procs <= MAX_PROCS):
        p.error(f"--rounds 1..{MAX_ROUNDS}, --client-procs 1..{MAX_PROCS}")
    if not 1 <= args.half_load_procs <= MAX_PROCS:
        p.error(f"--half-load-procs 1..{MAX_PROCS}")
    if not (0 < args.duration <= bench_load.MAX_DURATION_S and args.warmup >= 0):
        p.error("--duration must be in (0, 3600], --warmup >= 0")
    return args


def variants(args: argparse.Namespace) -> list[Variant]:
    """zraft and PySyncObj interleaved, so the systems alternate within a round."""
    systems = {s.strip() for s in args.systems.split(",")}
    zs = [Variant("zraft", fsync=f) for f in args.fsync] if "zraft" in systems else []
    batches = ["on", "off"] if args.pso_batch == "both" else [args.pso_batch]
    ps = [Variant("pysyncobj", batch=b) for b in batches] if "pysyncobj" in systems else []
    out: list[Variant] = []
    for i in range(max(len(zs), len(ps))):
        out += zs[i : i + 1] + ps[i : i + 1]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    m = machine()
    header: dict[str, Any] = {
        "machine": m,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
        "notes": NOTES,
    }
    work_dir = Path(tempfile.mkdtemp(prefix="zraft-bench-"))
    runner = Runner(args, work_dir)
    try:
        runner.run(variants(args))
    finally:
        runner.end_all()
        shutil.rmtree(work_dir, ignore_errors=True)
    summary = summarize(runner.rows)
    m["python_probe_warm_us_at_end"] = python_probe_us()
    print(f"zraft vs PySyncObj  {header['date']}  {m['cpu_model']} x{m['nproc']}  "
          f"python {m['python']}  load {m['loadavg_at_start'][0]:.1f}")  # fmt: skip
    print(
        f"python probe: warm {m['python_probe_warm_us']} us at start,"
        f" {m['python_probe_warm_us_at_end']} us at end;"
        f" {m['python_probe_after_3ms_sleep_us']} us right after a 3 ms sleep;"
        f" zmq send {m['zmq_send_warm_us']} us warm, {m['zmq_send_after_3ms_idle_us']} us"
        " after 3 ms idle"
    )
    print(table(summary))
    for note in NOTES:
        print(f"  * {note}")
    if args.json:
        doc = {**header, "summary": summary, "results": runner.rows}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.plot:
        plot(runner.rows, args.plot)
    return 0 if all("failed" not in r for r in runner.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
