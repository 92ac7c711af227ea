"""The Jepsen-style gauntlet: a real cluster, a client workload, a nemesis, a verdict.

    python tools/gauntlet.py --time 60 --nemesis partition,kill,pause,membership,disk \
        --nodes 5 --seed 7 --out runs/r7 --clients 4 --keys 5

Writes ``history.jsonl``, ``nemesis.jsonl`` and ``verdict.json`` into ``--out``
(with the cluster's data and logs under ``--out/cluster``), prints a summary,
and exits 0 iff the history is linearizable and the cluster has a leader after
every fault is healed. When partitions are asked for and we are root, the tool
re-executes itself under ``unshare --net`` so its iptables rules live in a
private network namespace; where that is impossible, partitions are skipped
with the reason in the verdict and the other faults still run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from zraft.errors import ZraftError
from zraft.testing.history import HistoryRecorder, write_jsonl
from zraft.testing.linearizability import check
from zraft.testing.nemesis import (
    FAULT_KINDS,
    NETNS_ENV,
    UID_BASE,
    FaultLog,
    Firewall,
    Mechanism,
    Nemesis,
    NemesisCluster,
    NemesisConfig,
    bring_up_loopback,
    detect_mechanism,
    in_private_netns,
    probe_node_user,
    traversable_by_others,
    unshare_command,
)
from zraft.testing.workload import Workload, WorkloadConfig, unexplained_final_values

MAX_TIME_S = 24 * 3600
CHECK_TIMEOUT_S = 120.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gauntlet", description=__doc__.split("\n\n")[0])
    p.add_argument("--time", type=float, default=30.0, help="seconds of workload + faults")
    p.add_argument("--nemesis", default="kill,pause", help=f"comma list of {','.join(FAULT_KINDS)}")
    p.add_argument("--nodes", type=int, choices=[3, 5], default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="run directory (kept); default gauntlet-runs/<seed>")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument(
        "--concurrency",
        type=int,
        choices=[1, 2, 3],
        default=1,
        help="faults that may overlap (disk damage always runs alone)",
    )
    p.add_argument("--check-timeout", type=float, default=CHECK_TIMEOUT_S)
    args = p.parse_args(argv)
    kinds = [k for k in args.nemesis.split(",") if k]
    bad = sorted(set(kinds) - set(FAULT_KINDS))
    if bad or not kinds:
        p.error(f"--nemesis: unknown kinds {bad}; choose from {','.join(FAULT_KINDS)}")
    if not 0 < args.time <= MAX_TIME_S:
        p.error(f"--time must be in (0, {MAX_TIME_S}]")
    args.kinds = list(dict.fromkeys(kinds))
    return args


def maybe_reexec(args: argparse.Namespace, argv: list[str]) -> None:
    """Partitions need a private network namespace: re-exec under ``unshare --net`` once."""
    if "partition" not in args.kinds or in_private_netns() or os.environ.get(NETNS_ENV):
        return
    if not detect_mechanism().can_unshare:
        return
    cmd, env = unshare_command([sys.executable, os.path.abspath(__file__), *argv])
    sys.stdout.flush()
    os.execvpe("unshare", cmd, env)


def choose_kinds(
    args: argparse.Namespace, mech: Mechanism, out: Path
) -> tuple[list[str], dict[str, str]]:
    """The fault kinds that can run here, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if "partition" in args.kinds:
        if not mech.partitions:
            skipped["partition"] = mech.reason
        elif not traversable_by_others(out):
            skipped["partition"] = f"{out} is not reachable by other uids (chmod o+x its parents)"
        elif why := probe_node_user(UID_BASE + 1, out):
            skipped["partition"] = why
    kinds = [k for k in args.kinds if k not in skipped]
    return kinds, skipped


def distribution(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    qs = (
        statistics.quantiles(values, n=10, method="inclusive")
        if len(values) > 1
        else [values[0]] * 9
    )
    return {
        "count": len(values),
        "min": round(min(values), 3),
        "p50": round(statistics.median(values), 3),
        "p90": round(qs[8], 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One gauntlet run; returns the verdict (also written to ``--out/verdict.json``)."""
    out = Path(args.out or f"gauntlet-runs/{args.seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("history.jsonl", "nemesis.jsonl", "verdict.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "cluster", ignore_errors=True)
    if in_private_netns():
        bring_up_loopback()
    mech = detect_mechanism()
    kinds, skipped = choose_kinds(args, mech, out)
    partitions = "partition" in kinds
    if partitions:
        out.chmod(out.stat().st_mode | 0o755)
    rng = random.Random(args.seed)
    log = FaultLog(out / "nemesis.jsonl")
    for kind, why in skipped.items():
        log.record(kind, "skipped", reason=why)
    hosts = [f"127.0.0.{10 + i}" for i in range(1, args.nodes + 1)] if partitions else None
    cluster = NemesisCluster(
        args.nodes,
        base_dir=out / "cluster",
        keep=True,
        hosts=hosts,
        uid_base=UID_BASE if partitions else None,
        extra_args=["--log-level", "info"],
    )
    nemesis: Nemesis | None = None
    workload: Workload | None = None
    verdict: dict[str, Any] = {
        "seed": args.seed,
        "nodes": args.nodes,
        "time_s": args.time,
        "concurrency": args.concurrency,
        "nemesis_requested": args.kinds,
        "nemesis_run": kinds,
        "skipped": skipped,
        "partition_mechanism": mech.reason,
        "out": str(out),
    }
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=30)
        verdict["initial_term"] = max(int(s.get("term", 0)) for s in cluster.statuses().values())
        recorder = HistoryRecorder()
        wl_cfg = WorkloadConfig(clients=args.clients, keys=args.keys, seed=args.seed)
        workload = Workload.for_endpoints(cluster.endpoints, cluster.cluster_id, recorder, wl_cfg)
        firewall = Firewall() if partitions else None
        if kinds:
            nemesis = Nemesis(
                cluster,
                kinds,
                rng,
                log,
                firewall=firewall,
                config=NemesisConfig(concurrency=args.concurrency),
            )
        verdict.update(_drive(args, cluster, workload, nemesis, log))
        ops = recorder.ops()
        write_jsonl(ops, out / "history.jsonl")
        result = check(ops, timeout_s=args.check_timeout)
        final = verdict.get("final_values", {})
        unexplained = unexplained_final_values(ops, final)
        verdict.update(
            linearizable=result.ok,
            checker=result.explain()[:4000],
            unexplained_final_values=unexplained,
            workload=workload.summary(),
        )
        verdict["ok"] = bool(
            result.ok is True
            and verdict.get("leader_after_heal")
            and not verdict.get("nemesis_error")
            and not unexplained
        )
    except Exception as exc:
        verdict["ok"] = False
        verdict["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if nemesis is not None:
            if not nemesis.halt():
                verdict.setdefault("error", "the nemesis did not stop within 120 s")
            nemesis.heal_all()
        if workload is not None:
            with contextlib.suppress(AssertionError):  # stuck threads: still end the nodes
                workload.stop()
        cluster.close()
        verdict["faults"] = log.counts()
        verdict["crashes"] = log.crashes()
        verdict["recovery_s"] = distribution(log.recovery_times_s())
        verdict["recovery_by_kind_s"] = {
            kind: distribution(times) for kind, times in log.recovery_times_by_kind_s().items()
        }
        log.close()
        (out / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str) + "\n")
    return verdict


def _drive(
    args: argparse.Namespace,
    cluster: NemesisCluster,
    workload: Workload,
    nemesis: Nemesis | None,
    log: FaultLog,
) -> dict[str, Any]:
    """Workload + nemesis for ``--time``, heal, wait for a leader, time it, final reads."""
    errors: list[str] = []

    def nemesis_main(deadline: float) -> None:
        assert nemesis is not None
        try:
            nemesis.run(deadline)
        except Exception as exc:  # recorded: a broken nemesis fails the run, loudly
            errors.append(f"{type(exc).__name__}: {exc}")
            log.record("nemesis", "error", error=errors[-1])

    workload.start()
    deadline = time.monotonic() + args.time
    thread = None
    if nemesis is not None:
        thread = threading.Thread(target=nemesis_main, args=(deadline,), name="nemesis")
        thread.start()
    time.sleep(max(0.0, deadline - time.monotonic()))
    if thread is not None:
        thread.join(120)
        if thread.is_alive():
            nemesis_stop = nemesis
            assert nemesis_stop is not None
            nemesis_stop.stop()
            thread.join(60)
    workload.stop()
    healed_at = time.monotonic()
    if nemesis is not None:
        nemesis.heal_all()
    leader = None
    try:
        leader = cluster.wait_for_leader(timeout=30)
    except TimeoutError as exc:
        errors.append(str(exc))
    recovery = None
    if nemesis is not None:
        recovery = nemesis.measure_recovery("final", healed_at)
    final = workload.final_reads()
    members = wait_all_voters(cluster, timeout_s=30.0)
    terms = [int(st.get("term", 0)) for st in cluster.statuses().values()]
    warnings: list[str] = []
    if set(members.get("voters", {})) != set(cluster.nodes):
        # a liveness problem, reported loudly; the verdict is about safety (linearizability)
        warnings.append(f"not every node is a voter again 30s after heal: {members}")
    return {
        "warnings": warnings,
        "final_members": members,
        "final_term": max(terms, default=0),
        "leader_after_heal": leader,
        "final_recovery_s": recovery,
        "final_values": final,
        "nemesis_error": "; ".join(errors),
    }


def wait_all_voters(cluster: NemesisCluster, timeout_s: float) -> dict[str, Any]:
    """Re-joined nodes come back as learners and get promoted: wait for that (bounded)."""
    deadline = time.monotonic() + timeout_s
    members: dict[str, Any] = {}
    with cluster.client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                members = client.members(timeout=2.0)
            except ZraftError:
                continue
            if set(members.get("voters", {})) == set(cluster.nodes):
                break
            time.sleep(0.2)
    return members


def summary_lines(v: dict[str, Any]) -> list[str]:
    wl = v.get("workload", {})
    lines = [
        f"gauntlet seed={v['seed']} nodes={v['nodes']} time={v['time_s']}s "
        f"nemesis={','.join(v['nemesis_run']) or '-'}",
        f"  verdict: {'VALID' if v.get('ok') else 'INVALID'} "
        f"(linearizable={v.get('linearizable')})",
        f"  ops: {wl.get('ops', 0)} {wl.get('by_outcome', {})}; acked writes "
        f"{wl.get('acked_writes', 0)}",
        f"  faults: {v.get('faults', {})}",
        f"  recovery (heal -> first write, s): {v.get('recovery_s', {})}",
        "  by fault: "
        + (
            "; ".join(
                f"{kind} x{d['count']} p50 {d['p50']} max {d['max']}"
                for kind, d in v.get("recovery_by_kind_s", {}).items()
            )
            or "-"
        ),
        f"  leader after heal: {v.get('leader_after_heal')}; voters "
        f"{sorted(v.get('final_members', {}).get('voters', {}))}",
    ]
    lines += [f"  skipped {k}: {why}" for k, why in v.get("skipped", {}).items()]
    lines += [f"  WARNING: {w}" for w in v.get("warnings", [])]
    lines += [
        f"  WARNING: {c['node']} exited unasked (status {c.get('exit_code')}) at "
        f"t={c['t_s']}s and was restarted: {c.get('evidence') or 'no stderr'}"
        for c in v.get("crashes", [])
    ]
    if v.get("nemesis_error"):
        lines.append(f"  nemesis error: {v['nemesis_error']}")
    if v.get("error"):
        lines.append(f"  error: {v['error']}")
    if not v.get("ok") and v.get("checker"):
        lines.append("  checker: " + str(v["checker"]).replace("\n", "\n    "))
    lines.append(f"  files: {v['out']}/{{history.jsonl,nemesis.jsonl,verdict.json,cluster/logs}}")
    return lines


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: nodes end by PID


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    maybe_reexec(args, argv)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        verdict = run(args)
    except Exception as exc:
        print(f"gauntlet: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(verdict)), flush=True)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
