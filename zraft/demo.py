"""``zraft demo``: a real 3-node cluster on loopback, a leader killed mid-run, no write lost."""

from __future__ import annotations

import signal
import time

from zraft.cli import STATUS_COLUMNS, cluster_status, format_table
from zraft.errors import ConfigError, ZraftError
from zraft.launcher import LocalCluster


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(nodes: int = 3, writes: int = 300, keep: bool = False, base_port: int = 0) -> int:
    """Start, write, kill the leader, write more, verify every write, print status, clean up."""
    if not 3 <= nodes <= 64:  # the rest must still be a majority once the leader is killed
        raise ConfigError(f"the demo kills its leader and writes on: 3 to 64 nodes, not {nodes}")
    cluster = LocalCluster(nodes, keep=keep, base_port=base_port)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup below

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        _say(f"starting {nodes} node processes ({', '.join(cluster.endpoints)})")
        cluster.start()
        started = time.monotonic()
        leader = cluster.wait_for_leader(timeout=30)
        _say(f"{leader} elected leader in {time.monotonic() - started:.2f}s")
        half = writes // 2
        with cluster.client(timeout=20) as client:
            t0 = time.monotonic()
            for i in range(half):
                client.apply("put", f"key-{i}", i)
            elapsed = time.monotonic() - t0
            _say(
                f"wrote {half} keys through the cluster in {elapsed:.2f}s "
                f"({half / elapsed:.0f} sequential writes/s, each fsynced on a majority)"
            )
            pid = cluster.nodes[leader].pid
            _say(f"killing leader {leader} (SIGKILL pid {pid})")
            killed_at = time.monotonic()
            cluster.kill(leader, signal.SIGKILL)
            client.apply("put", f"key-{half}", half)  # retries until a new leader commits it
            new_leader = cluster.wait_for_leader(timeout=30, exclude=leader)
            _say(
                f"{new_leader} took over; first write committed "
                f"{time.monotonic() - killed_at:.2f}s after the kill"
            )
            for i in range(half + 1, writes):
                client.apply("put", f"key-{i}", i)
            _say(f"wrote {writes - half} more keys with {leader} down")
            _say(f"restarting {leader}; it catches up from the new leader")
            cluster.start(leader)
            missing = [i for i in range(writes) if client.query("get", f"key-{i}") != i]
            if missing:
                _say(f"LOST WRITES: {missing[:10]} ({len(missing)} in all)")
                return 1
            _say(f"all {writes} writes read back (linearizable reads through the leader)")
            target = client.query("size")
            cluster.wait_applied(int(cluster.status_of(new_leader)["commit"]), timeout=30)
        with cluster.client(timeout=5) as status_client:
            rows = cluster_status(status_client)
        print(format_table(rows, STATUS_COLUMNS), flush=True)
        _say(f"the store holds {target} keys on every node; no acknowledged write was lost")
        if keep:
            _say(
                f"data and JSON logs kept in {cluster.base_dir} "
                f"(try: zraft tail --timeline {cluster.base_dir}/logs/*.jsonl)"
            )
        return 0
    except (ZraftError, TimeoutError, RuntimeError) as exc:
        _say(f"demo failed: {type(exc).__name__}: {exc}")
        _say(f"last stderr lines: {cluster.last_errors()}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        cluster.close()
        _say("stopped every node process and removed the data" if not keep else "stopped nodes")
