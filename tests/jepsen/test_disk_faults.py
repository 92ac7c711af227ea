"""Disk faults after a crash: a follower's log or hard state is damaged before it restarts.

Each test: a 3-node cluster takes acknowledged writes, a follower is SIGKILLed
and its files damaged, then it restarts. Acceptable: it repairs a torn tail and
rejoins, or it refuses to start (non-zero exit, a log line naming the file).
Not acceptable: the cluster losing an acknowledged write, or the damaged node
leading with entries missing. The torn-tail test forces the issue by killing
the leader too, so the damaged node must win or lose an election against a
complete peer.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zraft.client import Client
from zraft.launcher import LocalCluster
from zraft.testing.nemesis import flip_byte, newest_segment, truncate_tail

pytestmark = pytest.mark.process

WRITES = 40
START_FAIL_WAIT_S = 20.0


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    base = Path(tempfile.mkdtemp(prefix="zraft-disk-"))
    c = LocalCluster(3, base_dir=base / "c")
    try:
        c.start()
        yield c
    finally:
        c.close()  # ends every process by PID
        shutil.rmtree(base, ignore_errors=True)


def _write(client: Client, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        client.apply("put", f"k{i}", f"v{i}")


def _assert_complete(client: Client, hi: int) -> None:
    missing = [i for i in range(hi) if client.query("get", f"k{i}") != f"v{i}"]
    assert not missing, f"acknowledged writes lost: {missing[:10]}"


def _prepare(cluster: LocalCluster) -> tuple[str, str, str, Client]:
    """Writes applied everywhere; returns (leader, victim follower, other follower, client)."""
    leader = cluster.wait_for_leader(timeout=30)
    client = cluster.client(timeout=30)
    _write(client, 0, WRITES)
    commit = cluster.status_of(leader)["commit"]
    cluster.wait_applied(commit, timeout=30)
    victim, other = sorted(n for n in cluster.nodes if n != leader)
    cluster.kill(victim, signal.SIGKILL)
    return leader, victim, other, client


def _wait_exit(cluster: LocalCluster, node_id: str) -> int | None:
    """The node's exit code once it has exited, or None if it is still running."""
    proc = cluster.nodes[node_id].proc
    assert proc is not None
    try:
        return proc.wait(timeout=START_FAIL_WAIT_S)
    except subprocess.TimeoutExpired:
        return None


def _logs(cluster: LocalCluster, node_id: str) -> str:
    logs = cluster.base_dir / "logs"
    parts = [p.read_text(errors="replace") for p in sorted(logs.glob(f"{node_id}.*"))]
    return "\n".join(parts)


def test_torn_tail_is_cut_and_the_short_log_never_leads(cluster: LocalCluster) -> None:
    leader, victim, _other, client = _prepare(cluster)
    seg = newest_segment(cluster.nodes[victim].data_dir)
    assert seg is not None, "a follower with 40 entries has a segment"
    truncate_tail(seg, 3)  # the last record is now a torn write
    cluster.kill(leader, signal.SIGKILL)  # the victim must now face a complete peer
    cluster.start(victim)
    new_leader = cluster.wait_for_leader(timeout=30, exclude=leader)
    assert cluster.nodes[victim].alive(), f"torn tail not repaired:\n{_logs(cluster, victim)}"
    with client:
        _assert_complete(client, WRITES)
        _write(client, WRITES, WRITES + 10)
        cluster.start(leader)
        commit = cluster.status_of(new_leader)["commit"]
        cluster.wait_applied(commit, timeout=30)
        _assert_complete(client, WRITES + 10)
    sts = cluster.statuses()
    assert {s["applied"] for s in sts.values()} == {commit}, sts


def _flip_mid_segment(data_dir: Path) -> str:
    seg = newest_segment(data_dir)
    assert seg is not None
    flip_byte(seg, seg.stat().st_size // 2)
    return seg.name


def _flip_hardstate(data_dir: Path) -> str:
    flip_byte(data_dir / "hardstate", (data_dir / "hardstate").stat().st_size - 2)
    return "hardstate"


def _truncate_hardstate(data_dir: Path) -> str:
    path = data_dir / "hardstate"
    truncate_tail(path, path.stat().st_size // 2)
    return "hardstate"


@pytest.mark.parametrize(
    "damage",
    [_flip_mid_segment, _flip_hardstate, _truncate_hardstate],
    ids=["bitflip-mid-segment", "bitflip-hardstate", "truncated-hardstate"],
)
def test_damaged_follower_refuses_to_start_and_cluster_keeps_data(
    cluster: LocalCluster, damage: Callable[[Path], str]
) -> None:
    leader, victim, _other, client = _prepare(cluster)
    file_name = damage(cluster.nodes[victim].data_dir)
    cluster.start(victim)
    code = _wait_exit(cluster, victim)
    logs = _logs(cluster, victim)
    assert code is not None, f"{victim} started on a damaged {file_name}:\n{logs[-3000:]}"
    assert code != 0, "refusing to start is a failure exit"
    assert file_name in logs, f"no log line names {file_name}:\n{logs[-3000:]}"
    with client:  # the two healthy nodes still hold and serve everything
        _assert_complete(client, WRITES)
        _write(client, WRITES, WRITES + 10)
        _assert_complete(client, WRITES + 10)
    assert cluster.nodes[leader].alive() and not cluster.nodes[victim].alive()
