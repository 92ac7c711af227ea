"""Launch a local replicated key-value cluster of N node processes and keep it running.

python examples/kv/cluster.py --nodes 3            # Ctrl-C stops every node and cleans up
python examples/kv/client.py put x 1               # in another terminal
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from zraft.launcher import LocalCluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--base-port", type=int, default=7001)
    p.add_argument("--data-dir", default=None, help="default: a temp dir removed on exit")
    p.add_argument("--endpoints-file", default=None, help="write the endpoints here once up")
    args = p.parse_args(argv)
    cluster = LocalCluster(
        args.nodes,
        base_port=args.base_port,
        base_dir=Path(args.data_dir) if args.data_dir else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        endpoints = ",".join(cluster.endpoints)
        print(f"cluster up: leader {leader}; endpoints {endpoints}", flush=True)
        print(f"logs: {cluster.base_dir / 'logs'}", flush=True)
        if args.endpoints_file:
            Path(args.endpoints_file).write_text(endpoints)
        while not stop.wait(0.5):
            dead = [n.node_id for n in cluster.nodes.values() if not n.alive()]
            if len(dead) == len(cluster.nodes):
                print("every node exited", file=sys.stderr)
                return 1
        return 0
    finally:
        cluster.close()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
