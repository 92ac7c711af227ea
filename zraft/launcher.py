"""Start and stop a local cluster of real ``zraft run`` processes (demo, tests, bench, gauntlet).

Every process is tracked by PID and ended by PID; the data directory is removed
on close unless asked to keep it. Addresses are on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zraft.client import Client
from zraft.errors import ZraftError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (bound and released; a small race is accepted)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class NodeProc:
    node_id: str
    address: str
    data_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    #: endpoints this node joined through (it is not in the bootstrap --cluster list)
    join: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """N node processes on 127.0.0.1 with JSON logs in ``base_dir/logs``."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        base_dir: str | Path | None = None,
        app: str | None = None,
        fsync: str = "always",
        host: str = "127.0.0.1",
        base_port: int = 0,
        config_toml: str | None = None,
        keep: bool = False,
        cluster_id: str = "zraft",
        hosts: list[str] | None = None,
        extra_args: list[str] | None = None,
        curve_keys: str | None = None,
        curve_client: str = "client",
    ) -> None:
        if not 1 <= nodes <= 64:
            raise ValueError(f"a local cluster has 1 to 64 nodes, not {nodes}")
        if base_port and not 1 <= base_port <= 65536 - nodes:
            raise ValueError(f"ports {base_port}..{base_port + nodes - 1} are not all valid")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="zraft-cluster-"))
        self.keep = keep
        self.app, self.fsync, self.host, self.cluster_id = app, fsync, host, cluster_id
        self.config_toml = config_toml
        #: one loopback address per node (e.g. 127.0.0.1..3) lets a nemesis partition by IP
        self.hosts = hosts or [host] * nodes
        assert len(self.hosts) == nodes, "one host per node"
        self.curve_keys, self.curve_client = curve_keys, curve_client
        self.extra_args = (extra_args or []) + (["--curve-keys", curve_keys] if curve_keys else [])
        ports = [base_port + i for i in range(nodes)] if base_port else free_ports(nodes, host)
        self.nodes: dict[str, NodeProc] = {}
        for i, port in enumerate(ports, start=1):
            self._new_node(f"n{i}", f"tcp://{self.hosts[i - 1]}:{port}")
        self.cluster_spec = ",".join(f"{n.node_id}={n.address}" for n in self.nodes.values())

    def _new_node(self, node_id: str, address: str) -> NodeProc:
        node = NodeProc(
            node_id, address, self.base_dir / node_id, self.base_dir / "logs" / f"{node_id}.jsonl"
        )
        self.nodes[node_id] = node
        return node

    @property
    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def _command(self, node: NodeProc, join: str | None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "zraft.cli",
            "run",
            "--id",
            node.node_id,
            "--data-dir",
            str(node.data_dir),
            "--log-format",
            "json",
            "--log-file",
            str(node.log_file),
            "--fsync",
            self.fsync,
            "--cluster-id",
            self.cluster_id,
        ]
        if join:
            cmd += ["--bind", node.address, "--join", join]
        else:
            cmd += ["--cluster", self.cluster_spec]
        if self.app:
            cmd += ["--app", self.app]
        if self.config_toml:
            cmd += ["--config", self.config_toml]
        return cmd + self.extra_args + node.extra_args

    def start(self, node_id: str | None = None, join: str | None = None) -> None:
        """Start one node (or all that are not running)."""
        (self.base_dir / "logs").mkdir(parents=True, exist_ok=True)
        targets = [self.nodes[node_id]] if node_id else list(self.nodes.values())
        for node in targets:
            if node.alive():
                continue
            node.join = join or node.join
            node.data_dir.mkdir(parents=True, exist_ok=True)
            stderr = open(self.base_dir / "logs" / f"{node.node_id}.stderr", "ab")  # noqa: SIM115
            node.proc = subprocess.Popen(
                self._command(node, node.join),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
            stderr.close()

    def add_node(
        self, node_id: str | None = None, join: str | None = None, host: str | None = None
    ) -> NodeProc:
        """Create and start a new node that joins through ``join`` (default: any member)."""
        node_id = node_id or f"n{len(self.nodes) + 1}"
        host = host or self.host
        node = self._new_node(node_id, f"tcp://{host}:{free_ports(1, host)[0]}")
        self.start(node_id, join=join or ",".join(self.endpoints[:-1]))
        return node

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's PID (never by name) and reap it if it ends."""
        node = self.nodes[node_id]
        if node.proc is None or node.proc.poll() is not None:
            return
        os.kill(node.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            try:
                node.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=5)

    def stop(self, node_id: str) -> None:
        self.kill(node_id, signal.SIGTERM)

    def wipe(self, node_id: str) -> None:
        """Delete a stopped node's data. Restarting it forgets its vote: in a real cluster,
        remove the member first and add it back (or use a new id)."""
        shutil.rmtree(self.nodes[node_id].data_dir, ignore_errors=True)

    def client(self, timeout: float = 10.0, client_name: str | None = None) -> Client:
        """A client for the cluster (with CURVE keys when the cluster has them)."""
        return Client(
            {n.node_id: n.address for n in self.nodes.values()},
            cluster_id=self.cluster_id,
            timeout=timeout,
            curve_keys=self.curve_keys,
            client_name=client_name or self.curve_client,
        )

    def statuses(self, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
        """Status of every live node, keyed by node id."""
        out: dict[str, dict[str, Any]] = {}
        with self.client(timeout=timeout) as c:
            for node in self.nodes.values():
                if not node.alive():
                    continue
                with contextlib.suppress(ZraftError):
                    out[node.node_id] = c.status(node.address, timeout=timeout)
        return out

    def status_of(self, node_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """One node's status, asked again until it answers (a busy node may miss the
        second :meth:`statuses` gives each); TimeoutError if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.nodes[node_id].alive():
                raise RuntimeError(f"{node_id} is not running: {self.last_errors()}")
            with self.client(timeout=1.0) as c, contextlib.suppress(ZraftError):
                status: dict[str, Any] = c.status(self.nodes[node_id].address, timeout=1.0)
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node_id} did not answer a status request in {timeout}s")

    def wait_for_leader(self, timeout: float = 30.0, exclude: str | None = None) -> str:
        """Poll until one live node reports itself leader and the others agree or are silent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = self.statuses()
            leaders = {
                nid for nid, s in sts.items() if s.get("role") == "leader" and nid != exclude
            }
            if len(leaders) == 1:
                return leaders.pop()
            if self.nodes and not any(n.alive() for n in self.nodes.values()):
                raise RuntimeError(f"every node process exited: {self.last_errors()}")
            time.sleep(0.05)
        raise TimeoutError(
            f"no single leader within {timeout}s; see logs in {self.base_dir / 'logs'}"
        )

    def last_errors(self) -> str:
        """Each node's last line of stderr (why a process that exited did), for messages."""
        out = []
        for node_id in self.nodes:
            path = self.base_dir / "logs" / f"{node_id}.stderr"
            try:
                lines = path.read_text(errors="replace").strip().splitlines()
            except OSError:
                lines = []
            out.append(f"{node_id}: {lines[-1] if lines else '(nothing on stderr)'}")
        return "; ".join(out)

    def wait_applied(
        self, index: int, node_ids: list[str] | None = None, timeout: float = 60.0
    ) -> None:
        deadline = time.monotonic() + timeout
        ids = node_ids or [n for n, p in self.nodes.items() if p.alive()]
        while time.monotonic() < deadline:
            sts = self.statuses()
            if all(sts.get(n, {}).get("applied", -1) >= index for n in ids):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nodes {ids} did not apply index {index} within {timeout}s")

    def close(self) -> None:
        """End every process by PID, then remove the data (unless keep=True)."""
        for node in self.nodes.values():
            if node.alive():
                assert node.proc is not None
                os.kill(node.proc.pid, signal.SIGCONT)  # a paused node could not exit
                os.kill(node.proc.pid, signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(node.proc.pid, signal.SIGKILL)
                    node.proc.wait(timeout=5)
        if not self.keep and self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
