"""The ``zraft`` command.

Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 cluster unreachable.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from zraft.config import Config, parse_cluster
from zraft.errors import ConfigError, ZraftError
from zraft.gc_tuning import tune_gc
from zraft.storage.errors import DataDirLocked, DataDirMismatch, StorageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def load_app(spec: str) -> Any:
    """Instantiate ``module:Class`` or ``path/to/file.py:Class``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"--app {spec!r}: expected module:Class or path/file.py:Class")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"--app: no such file {path}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"--app: cannot import {target}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"--app: {target} has no {attr}")
    return cls()


# ---------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from zraft import logs
    from zraft.node import Node

    peers = parse_cluster(args.cluster) if args.cluster else {}
    overrides: dict[str, Any] = {
        "node_id": args.id,
        "data_dir": args.data_dir,
        "join": args.join,
        "curve_keys": args.curve_keys,
        "cluster_id": args.cluster_id,
    }
    if args.bind:
        overrides["bind"] = args.bind
    elif args.id in peers:
        overrides["bind"] = peers[args.id]
    if peers:
        overrides["peers"] = peers
    if args.fsync:
        overrides["fsync"] = args.fsync
    if args.config:
        config = Config.from_toml(args.config, **overrides)
    else:
        for flag, value in (("--id", args.id), ("--data-dir", args.data_dir)):
            if not value:
                raise ConfigError(f"{flag} is required (or give it in a --config file)")
        if "bind" not in overrides:
            raise ConfigError("--bind is required when --cluster does not name this node")
        config = Config(**{k: v for k, v in overrides.items() if v is not None}).validate()
    logs.configure(args.log_format, args.log_file, args.log_level)
    app = load_app(args.app) if args.app else None
    node = Node(config, app)

    tune_gc()  # before the handlers: a signal in between would find no reactor to stop

    def on_signal(signum: int, _frame: Any) -> None:
        node.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    profile_path = os.environ.get("ZRAFT_PROFILE")
    if profile_path:  # a developer tool: cProfile the whole reactor, dump at exit
        import cProfile

        cProfile.runctx("node.run()", globals(), {"node": node}, f"{profile_path}.{config.node_id}")
    else:
        node.run()
    failed = node.status().get("storage_error")
    if failed:  # the log may be a file nobody watches: the supervisor sees stderr
        print(f"zraft run: {config.node_id} stopped, its storage failed: {failed}", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK


# ---------------------------------------------------------------------------- cluster commands


def _client(args: argparse.Namespace, timeout: float = 10.0) -> Any:
    from zraft.client import Client

    return Client(
        args.endpoints,
        cluster_id=args.cluster_id,
        timeout=timeout,
        curve_keys=args.curve_keys,
        client_name=args.client_name,
    )


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Render rows as an aligned text table (no colours: scripts read it too)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


STATUS_COLUMNS = [
    "id",
    "role",
    "term",
    "leader",
    "commit",
    "applied",
    "last_index",
    "lag",
    "fsync_p99_ms",
    "turn_p99_ms",
    "address",
]


def cluster_status(client: Any, timeout: float = 1.5) -> list[dict[str, Any]]:
    """Ask every endpoint, and every member the leader names, for its status.

    Unreachable nodes get a row that says so, so a dead node is visible in the table.
    """
    rows: dict[str, dict[str, Any]] = {}
    todo = list(client.endpoints)
    seen: set[str] = set()
    asked_members = False
    while todo:
        ep = todo.pop(0)
        if ep in seen:
            continue
        seen.add(ep)
        try:
            st = client.status(ep, timeout=timeout)
        except ZraftError as exc:
            rows[ep] = {"id": "?", "role": "unreachable", "address": ep, "error": str(exc)}
            continue
        st["address"] = ep
        metrics = st.get("metrics") or {}  # since the node started (see README, Operations)
        st["fsync_p99_ms"] = metrics.get("log_fsync", {}).get("p99_ms", "")
        st["turn_p99_ms"] = metrics.get("turn", {}).get("p99_ms", "")
        rows[ep] = st
        if not asked_members:  # the leader names every member (the client finds it)
            asked_members = True
            try:
                members = client.members(timeout=timeout)
            except ZraftError:
                continue
            for node_id, addr in {**members["voters"], **members["learners"]}.items():
                client._node_ids.setdefault(addr, node_id)
                todo.append(addr)
    for ep, r in rows.items():  # a down member the leader named: say which one it is
        if r["id"] == "?":
            r["id"] = client._node_ids.get(ep, "?")
    leader_commit = max((r.get("commit", 0) for r in rows.values()), default=0)
    for r in rows.values():
        if "applied" in r:
            r["lag"] = leader_commit - int(r["applied"])
    return sorted(rows.values(), key=lambda r: str(r.get("id")))


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args, timeout=2.0) as client:
        while True:
            rows = cluster_status(client)
            if args.json:
                print(json.dumps(rows, sort_keys=True, default=str), flush=True)
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")
                print(format_table(rows, STATUS_COLUMNS), flush=True)
            if not args.watch:
                break
            try:
                time.sleep(args.interval)
            except KeyboardInterrupt:  # how one ends --watch: not a failure
                break
    return EXIT_OK if any(r.get("role") != "unreachable" for r in rows) else EXIT_UNREACHABLE


def cmd_members(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "add":
            if not args.node_id or not args.address:
                raise ConfigError("members add NODE_ID ADDRESS")
            before = client.members()
            known = {**before["voters"], **before["learners"]}
            client.add_member(args.node_id, args.address, voter=not args.learner)
            if args.node_id in known:
                print(f"{args.node_id} is already a member at {known[args.node_id]}: unchanged")
            else:
                kind = "learner" if args.learner else "voter once caught up"
                print(f"added {args.node_id} ({kind})")
        elif args.action == "remove":
            if not args.node_id:
                raise ConfigError("members remove NODE_ID")
            before = client.members()
            client.remove_member(args.node_id)
            if args.node_id in {**before["voters"], **before["learners"]}:
                print(f"removed {args.node_id}")
            else:
                print(f"{args.node_id} is not a member: nothing to remove")
        m = client.members()
        if args.json:
            print(json.dumps(m, sort_keys=True))
        else:
            rows = [{"id": k, "kind": "voter", "address": v} for k, v in m["voters"].items()]
            promoting = set(m.get("promoting", ()))
            for k, v in m["learners"].items():
                kind = "learner (to voter)" if k in promoting else "learner"
                rows.append({"id": k, "kind": kind, "address": v})
            for r in rows:
                r["leader"] = "*" if r["id"] == m["leader"] else ""
            print(
                format_table(
                    sorted(rows, key=lambda r: r["id"]), ["id", "kind", "leader", "address"]
                )
            )
    return EXIT_OK


def cmd_transfer(args: argparse.Namespace) -> int:
    with _client(args) as client:
        target = client.transfer_leadership(args.to)
        print(f"leadership handed to {target}")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    with _client(args, timeout=120) as client:
        endpoints = client.endpoints  # parsed as every command does (id=address, spaces)
        targets = endpoints if args.all else [endpoints[0]]
        failed = 0
        for ep in targets:  # one node's failure does not stop the others' snapshots
            try:
                index = client.take_snapshot(ep)
            except ZraftError as exc:
                if not args.all:
                    raise
                failed += 1
                print(f"{ep}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            print(f"{ep}: snapshot at index {index}")
    return EXIT_FAIL if failed else EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from zraft.security import generate_keypair

    if not args.names and not args.clients:
        raise ConfigError("keygen needs --name NODE_ID and/or --client NAME")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    for name in args.names:
        public, secret = generate_keypair(args.dir, name, overwrite=args.force)
        print(f"node {name}: public {public}  secret {secret}")
    for name in args.clients:
        public, secret = generate_keypair(Path(args.dir) / "clients", name, overwrite=args.force)
        print(f"client {name}: public {public}  secret {secret}")
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    """Discard a damaged log suffix so the node can start and catch up from the leader."""
    from zraft.storage import repair

    report = repair(args.data_dir, reset_hard_state=args.reset_hard_state)
    for cut in report.cuts:
        removed = f"; removed {', '.join(cut.removed_files)}" if cut.removed_files else ""
        print(f"cut {cut.path} at byte {cut.offset}: {cut.reason}{removed}")
    if report.log_reset:
        print(
            "the log did not meet a valid snapshot: it was dropped; the node will catch up"
            " from the leader"
        )
    if report.hard_state_error:
        state = "rewritten (UNSAFE)" if report.hard_state_reset else "left as is"
        print(f"hard state unreadable: {report.hard_state_error}; {state}")
    if not report.changed and not report.hard_state_error:
        print("nothing to repair")
    print(f"log now holds {report.first_index}..{report.last_index}")
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_demo(args: argparse.Namespace) -> int:
    from zraft.demo import run_demo

    return run_demo(nodes=args.nodes, writes=args.writes, keep=args.keep, base_port=args.base_port)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zraft", description="Raft consensus over ZeroMQ.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one node in the foreground")
    run.add_argument("--id", help="this node's id, e.g. n1 (or node_id in --config)")
    run.add_argument("--cluster", help="bootstrap membership: n1=tcp://127.0.0.1:7001,n2=...")
    run.add_argument(
        "--bind", help="address to bind (default: this node's address in --cluster or [peers])"
    )
    run.add_argument("--data-dir", help="where the node keeps its state (or data_dir in --config)")
    run.add_argument("--join", help="endpoint of a running cluster to join (empty data dir)")
    run.add_argument("--app", help="state machine: module:Class or path/file.py:Class (default KV)")
    run.add_argument("--config", help="zraft.toml with any Config option")
    run.add_argument("--cluster-id", help="default: the config file's, else 'zraft'")
    run.add_argument("--fsync", choices=["always", "never"])
    run.add_argument("--log-file")
    run.add_argument("--log-format", choices=["json", "console"], default="console")
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"]
    )
    run.add_argument("--curve-keys", help="directory of CURVE keys (see zraft keygen)")
    run.set_defaults(func=cmd_run)

    def cluster_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--endpoints",
            "--endpoint",
            required=True,
            help="comma-separated node addresses (id=address with --curve-keys)",
        )
        sp.add_argument("--cluster-id", default="zraft")
        sp.add_argument("--curve-keys", help="CURVE key directory (see zraft keygen)")
        sp.add_argument("--client-name", default="client", help="key: clients/NAME.key_secret")

    st = sub.add_parser("status", help="a table of every node's role, term and indexes")
    cluster_args(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true", help="refresh until interrupted")
    st.add_argument("--interval", type=float, default=1.0)
    st.set_defaults(func=cmd_status)

    mem = sub.add_parser("members", help="list, add or remove cluster members")
    mem.add_argument("action", choices=["list", "add", "remove"])
    mem.add_argument("node_id", nargs="?")
    mem.add_argument("address", nargs="?")
    mem.add_argument("--learner", action="store_true", help="add as a non-voting learner")
    mem.add_argument("--json", action="store_true")
    cluster_args(mem)
    mem.set_defaults(func=cmd_members)

    tr = sub.add_parser("transfer", help="hand leadership to another voter")
    tr.add_argument("--to", help="target node id (default: the most caught-up voter)")
    cluster_args(tr)
    tr.set_defaults(func=cmd_transfer)

    sn = sub.add_parser("snapshot", help="take a snapshot now on a node")
    sn.add_argument("--all", action="store_true", help="on every listed endpoint")
    cluster_args(sn)
    sn.set_defaults(func=cmd_snapshot)

    kg = sub.add_parser("keygen", help="write CURVE key pairs (NAME.key, NAME.key_secret)")
    kg.add_argument("dir")
    kg.add_argument("--name", dest="names", action="append", default=[], help="a node id")
    kg.add_argument(
        "--client", dest="clients", action="append", default=[], help="a client (in DIR/clients)"
    )
    kg.add_argument("--force", action="store_true", help="replace existing key pairs")
    kg.set_defaults(func=cmd_keygen)

    rp = sub.add_parser(
        "repair",
        help="discard a damaged log suffix (the node then catches up from the leader)",
        description="Safe on one node at a time while a majority still holds the entries.",
    )
    rp.add_argument("--data-dir", required=True)
    rp.add_argument(
        "--reset-hard-state",
        action="store_true",
        help="UNSAFE: rewrite an unreadable term/vote file (the node could vote twice)",
    )
    rp.set_defaults(func=cmd_repair)

    demo = sub.add_parser("demo", help="run a local 3-node cluster, kill its leader, show failover")
    demo.add_argument("--nodes", type=int, default=3, help="3 to 64 (the leader is killed)")
    demo.add_argument("--writes", type=int, default=300)
    demo.add_argument("--base-port", type=int, default=0, help="0 = pick free ports")
    demo.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    demo.set_defaults(func=cmd_demo)

    try:
        from zraft import tail
    except ImportError:  # pragma: no cover - tail ships with the package
        tail = None  # type: ignore[assignment]
    if tail is not None:
        tl = sub.add_parser("tail", help="follow and merge the JSON logs of a cluster")
        tail.add_arguments(tl)
        tl.set_defaults(func=tail.run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, DataDirLocked, DataDirMismatch) as exc:  # the operator's to fix
        print(f"zraft {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"zraft {args.command}: refusing to run on damaged storage: {exc}", file=sys.stderr)
        print(
            "  the rest of the cluster keeps the data: `zraft repair --data-dir DIR` discards",
            file=sys.stderr,
        )
        print("  the damaged suffix, and the node then catches up from the leader", file=sys.stderr)
        return EXIT_FAIL
    except ZraftError as exc:
        print(f"zraft {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        unreachable = any(s in str(exc) for s in ("no answer", "could not connect"))
        return EXIT_UNREACHABLE if unreachable else EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except (OSError, ValueError, zmq.ZMQError) as exc:  # a path, an address, a value
        print(f"zraft {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
