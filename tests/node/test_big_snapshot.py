"""A 100 MB state installs on a new follower in chunks with bounded memory (issue 5)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from zraft.launcher import LocalCluster

pytestmark = pytest.mark.process

STATE_MB = 100


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_hundred_megabyte_state_installs_in_chunks(tmp_path: Path) -> None:
    toml = tmp_path / "zraft.toml"
    toml.write_text("snapshot_entries = 0\nsnapshot_trailing = 0\nsegment_bytes = 8388608\n")
    with LocalCluster(3, base_dir=tmp_path / "c", config_toml=str(toml)) as cluster:
        leader = cluster.wait_for_leader(timeout=30)
        value = os.urandom(1 << 20)
        with cluster.client(timeout=60) as c:
            for i in range(STATE_MB):
                c.apply("put", f"blob-{i}", value[i:] + value[:i])
            index = c.take_snapshot(cluster.nodes[leader].address, timeout=120)
        assert index >= STATE_MB
        st = cluster.status_of(leader)
        assert st["first_index"] > index - 10, "the leader's log was not compacted"
        started = time.monotonic()
        node = cluster.add_node("n4")
        assert node.pid is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sts = cluster.statuses()
            if sts.get("n4", {}).get("applied", 0) >= index:
                break
            time.sleep(0.2)
        assert sts["n4"]["applied"] >= index, "the new node did not catch up"
        assert sts["n4"]["snapshot_index"] >= index, "it caught up without the snapshot"
        seconds = time.monotonic() - started
        peak_mb = _peak_rss_mb(node.pid)
        print(f"\n100 MB state installed on n4 in {seconds:.1f}s; n4 peak RSS {peak_mb:.0f} MB")
        # the state itself is 100 MB; an install that held the snapshot twice would pass 200.
        # Peaks seen on one 2-core VM: 140-144 MB alone, 164 MB once in a full CI run.
        assert peak_mb < 1.8 * STATE_MB, f"peak RSS {peak_mb:.0f} MB"
        with cluster.client(timeout=60) as c:
            assert c.query("get", "blob-7", consistency="local") is not None
        leader_log = cluster.nodes[leader].log_file.read_text()
        assert '"snapshot_sent"' in leader_log and '"to": "n4"' in leader_log
