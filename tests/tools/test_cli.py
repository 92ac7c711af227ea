"""Each zraft subcommand run as a user would (subprocess), checking output and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zraft.config import Config
from zraft.errors import ConfigError
from zraft.launcher import LocalCluster, free_ports

pytestmark = pytest.mark.process


def zraft(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zraft.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_help_for_every_subcommand() -> None:
    top = zraft("--help")
    assert top.returncode == 0
    for sub in ("run", "demo", "status", "members", "transfer", "snapshot", "keygen", "tail"):
        assert sub in top.stdout
        res = zraft(sub, "--help")
        assert res.returncode == 0 and "usage: zraft " + sub in res.stdout


def test_usage_and_config_errors_say_what_to_do(tmp_path: Path) -> None:
    res = zraft("run", "--id", "n1", "--cluster", "n1=nonsense", "--data-dir", str(tmp_path))
    assert res.returncode == 2 and "tcp://" in res.stderr
    res = zraft(
        "run", "--id", "n9", "--cluster", "n1=tcp://127.0.0.1:1", "--data-dir", str(tmp_path)
    )
    assert res.returncode == 2 and "--bind" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("tick_ms = 50\nno_such_option = 1\n")
    res = zraft(
        "run",
        "--id",
        "n1",
        "--bind",
        "tcp://127.0.0.1:1",
        "--data-dir",
        str(tmp_path),
        "--config",
        str(bad),
    )
    assert res.returncode == 2 and "no_such_option" in res.stderr
    assert zraft("keygen", str(tmp_path / "k")).returncode == 2
    assert zraft("bogus").returncode == 2
    shared = "n1=tcp://127.0.0.1:7,n2=tcp://127.0.0.1:7"
    res = zraft("run", "--id", "n1", "--cluster", shared, "--data-dir", str(tmp_path / "s"))
    assert res.returncode == 2 and "n1 and n2 share the address" in res.stderr


def test_an_empty_node_with_nothing_to_bootstrap_or_join_is_refused(tmp_path: Path) -> None:
    """It would drop every message (no member may speak to it) and wait forever: a node
    added with `zraft members add` is started with --join."""
    port = free_ports(1)[0]
    log_file = tmp_path / "logs" / "n4.jsonl"  # logs/ does not exist yet: it is made
    res = zraft("run", "--id", "n4", "--bind", f"tcp://127.0.0.1:{port}",
                "--data-dir", str(tmp_path / "d"), "--log-file", str(log_file),
                "--log-format", "json")  # fmt: skip
    assert res.returncode == 2 and "--join" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "node_start_failed" in log_file.read_text()
    assert not (tmp_path / "d").exists(), "a refused first start leaves no data dir behind"


def test_a_config_file_can_name_the_node_its_data_dir_and_its_address(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    toml = tmp_path / "zraft.toml"
    toml.write_text(
        f'node_id = "n1"\ndata_dir = "{tmp_path / "d"}"\n'
        f'[peers]\nn1 = "tcp://127.0.0.1:{port}"\nn2 = "tcp://127.0.0.1:1"\n'
    )
    cfg = Config.from_toml(toml)
    assert (cfg.node_id, cfg.bind, cfg.data_dir) == (
        "n1",
        f"tcp://127.0.0.1:{port}",
        str(tmp_path / "d"),
    )
    assert Config.from_toml(toml, node_id="n2").bind == "tcp://127.0.0.1:1"
    toml.write_text('node_id = "n1"\n')
    with pytest.raises(ConfigError, match="no bind"):
        Config.from_toml(toml)
    res = zraft("run", "--config", str(toml), "--bind", f"tcp://127.0.0.1:{port}")
    assert res.returncode == 2 and "no data_dir" in res.stderr, res.stderr
    res = zraft("run", "--data-dir", str(tmp_path / "x"), "--bind", f"tcp://127.0.0.1:{port}")
    assert res.returncode == 2 and "--id is required" in res.stderr, res.stderr


def test_another_nodes_or_a_busy_data_dir_is_refused(tmp_path: Path) -> None:
    from zraft.core.types import Membership
    from zraft.storage import Storage

    with Storage.open(tmp_path / "d") as st:
        st.claim("n1", "zraft")
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:8", "n2": "tcp://127.0.0.1:9"}))
        args = ["run", "--id", "n2", "--cluster", "n2=tcp://127.0.0.1:9"]
        res = zraft(*args, "--data-dir", str(tmp_path / "d"))
        assert res.returncode == 2 and "is open by another" in res.stderr  # st holds it
    res = zraft(*args, "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2 and "belongs to node 'n1'" in res.stderr, res.stderr
    assert "damaged" not in res.stderr and "repair" not in res.stderr


def test_a_port_in_use_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        res = zraft("run", "--id", "n1", "--cluster", f"n1={addr}", "--data-dir", str(tmp_path))
    assert res.returncode == 2, res.stderr
    assert f"cannot listen on {addr}" in res.stderr and "Traceback" not in res.stderr
    assert "another process is using the port" in res.stderr
    from zraft.storage import Storage

    with Storage.open(tmp_path) as st:  # nothing written: a retry elsewhere starts afresh
        assert st.is_empty() and not (tmp_path / "identity").exists()


def test_snapshot_of_a_down_node_says_so_in_seconds() -> None:
    """It waited out the whole 60 s snapshot timeout for a connection (found in review)."""
    started = time.monotonic()
    res = zraft("snapshot", "--endpoints", f"tcp://127.0.0.1:{free_ports(1)[0]}")
    assert res.returncode == 3 and "could not connect" in res.stderr, res.stderr
    assert time.monotonic() - started < 30  # generous: the connect wait is 3 s


def test_status_of_an_unreachable_cluster_exits_3() -> None:
    port = free_ports(1)[0]
    res = zraft("status", "--endpoints", f"tcp://127.0.0.1:{port}", timeout=60)
    assert res.returncode == 3 and "unreachable" in res.stdout


def test_cluster_commands_against_a_live_cluster(tmp_path: Path) -> None:
    with LocalCluster(3, base_dir=tmp_path / "c") as cluster:
        leader = cluster.wait_for_leader(timeout=30)
        eps = ",".join(cluster.endpoints)
        with cluster.client(timeout=30) as c:
            for i in range(20):
                c.apply("put", f"k{i}", i)
        cluster.wait_applied(cluster.status_of(leader)["commit"], timeout=30)  # followers too
        res = zraft("status", "--endpoints", eps)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.strip().splitlines()
        assert lines[0].split()[:4] == ["id", "role", "term", "leader"]
        assert len(lines) == 4 and sum("leader" in ln.split()[1] for ln in lines[1:]) == 1
        rows = json.loads(zraft("status", "--endpoints", eps, "--json").stdout)
        assert {r["id"] for r in rows} == {"n1", "n2", "n3"}
        assert all(r["applied"] >= 20 for r in rows)
        assert all(r["metrics"]["append_batch"]["total"] >= 20 for r in rows)  # entries
        assert all(r["metrics"]["log_fsync"]["count"] >= 1 for r in rows)  # flushes may merge
        assert "fsync_p99_ms" in lines[0].split() and "turn_p99_ms" in lines[0].split()
        # status through a single endpoint still lists every member
        one = json.loads(zraft("status", "--endpoints", cluster.endpoints[0], "--json").stdout)
        assert {r["id"] for r in one} == {"n1", "n2", "n3"}

        res = zraft("members", "list", "--endpoints", eps)
        assert res.returncode == 0 and res.stdout.count("voter") == 3
        spare = f"tcp://127.0.0.1:{free_ports(1)[0]}"
        res = zraft("members", "add", "n9", spare, "--learner", "--endpoints", eps)
        assert res.returncode == 0, res.stderr
        assert "n9" in res.stdout and "learner" in res.stdout
        res = zraft("members", "remove", "n9", "--endpoints", eps, "--json")
        assert res.returncode == 0, res.stderr
        assert "n9" not in json.loads(res.stdout.splitlines()[-1])["learners"]
        res = zraft("members", "remove", "n9", "--endpoints", eps)  # a no-op says so
        assert res.returncode == 0 and "not a member" in res.stdout
        res = zraft("members", "add", "n1", cluster.nodes["n1"].address, "--endpoints", eps)
        assert res.returncode == 0 and "already a member" in res.stdout
        res = zraft("members", "add", "n1", spare, "--endpoints", eps)  # a move: refused
        assert res.returncode == 1 and "to move it, remove it" in res.stderr

        target = next(n for n in cluster.nodes if n != leader)
        res = zraft("transfer", "--to", target, "--endpoints", eps)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cluster.wait_for_leader(timeout=20) != target:
            time.sleep(0.1)
        assert cluster.wait_for_leader(timeout=20) == target

        res = zraft("snapshot", "--endpoints", eps, "--all", timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("snapshot at index") == 3
        named = ", ".join(f"{nid}={n.address}" for nid, n in cluster.nodes.items())
        res = zraft("snapshot", "--endpoints", named, timeout=120)  # as CURVE needs them
        assert res.returncode == 0, res.stderr

        logs = sorted(str(p) for p in (cluster.base_dir / "logs").glob("*.jsonl"))
        res = zraft("tail", "--timeline", *logs)
        assert res.returncode == 0, res.stderr
        assert "leader" in res.stdout

        down = sorted(cluster.nodes)[0]  # listed first: asked before the leader names it
        if down == cluster.wait_for_leader(timeout=30):
            down = sorted(cluster.nodes)[1]
        cluster.stop(down)
        rows = json.loads(zraft("status", "--endpoints", eps, "--json").stdout)
        assert {r["id"]: r["role"] for r in rows}[down] == "unreachable", rows


def test_demo_runs_as_the_readme_says() -> None:
    """The README's first command ends in `zraft demo`; it must work within a time bound."""
    res = zraft("demo", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "took over" in res.stdout and "no acknowledged write was lost" in res.stdout
    assert "stopped every node process" in res.stdout


def test_damaged_log_refused_then_repaired(tmp_path: Path) -> None:
    """A node refuses to start on a damaged log; `zraft repair` lets it start and catch up."""
    with LocalCluster(3, base_dir=tmp_path / "c") as cluster:
        leader = cluster.wait_for_leader(timeout=30)
        victim = next(n for n in cluster.nodes if n != leader)
        with cluster.client(timeout=30) as c:
            for i in range(200):
                c.apply("put", f"k{i}", i)
        cluster.stop(victim)
        data_dir = cluster.nodes[victim].data_dir
        segment = sorted(data_dir.rglob("*.seg"))[0]
        raw = bytearray(segment.read_bytes())
        raw[len(raw) // 3] ^= 0xFF  # a flipped bit in the middle: not a torn tail
        segment.write_bytes(bytes(raw))
        node = cluster.nodes[victim]
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "zraft.cli",
                "run",
                "--id",
                victim,
                "--cluster",
                cluster.cluster_spec,
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert res.returncode == 1
        assert "refusing to run on damaged storage" in res.stderr and segment.name in res.stderr
        rep = zraft("repair", "--data-dir", str(data_dir))
        assert rep.returncode == 0, rep.stderr
        assert "cut" in rep.stdout
        cluster.start(victim)
        commit = cluster.status_of(leader)["commit"]
        cluster.wait_applied(commit, [victim], timeout=60)
        with cluster.client(timeout=30) as c:
            assert [c.query("get", f"k{i}") for i in range(200)] == list(range(200))
        assert node.alive()


def test_tune_gc_freezes_start_up_objects_out_of_the_collectors_sight() -> None:
    """`zraft run` owns its process (and an embedding app may call zraft.tune_gc): full
    GC passes must not walk the interpreter's objects."""
    code = (
        "import gc, zraft; before = gc.get_freeze_count(); "
        "zraft.tune_gc(); print(before, gc.get_freeze_count(), gc.get_threshold()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, gen0 = (int(x) for x in out.stdout.split())
    assert before == 0 and frozen > 1000 and gen0 > 700, out.stdout


def test_operator_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    """Wrong types in zraft.toml, impossible ports and bad endpoints: exit 2 with a line
    that names the problem, never a traceback (found in review)."""
    typed = tmp_path / "typed.toml"
    typed.write_text('lease_reads = "false"\n')  # a string: truthy, lease reads on
    port = f"n1=tcp://127.0.0.1:{free_ports(1)[0]}"
    cases = [
        (("run", "--id", "n1", "--cluster", port, "--data-dir", str(tmp_path / "d"),
          "--config", str(typed)), "lease_reads"),
        (("run", "--id", "n1", "--cluster", "n1=tcp://127.0.0.1:99999",
          "--data-dir", str(tmp_path / "d")), "99999"),
        (("run", "--id", "n1", "--cluster", port, "--data-dir", str(tmp_path / "d"),
          "--log-level", "bogus"), "invalid choice"),
        (("status", "--endpoints", "garbage"), "garbage"),
        (("demo", "--nodes", "0"), "3 to 64 nodes"),
        (("demo", "--nodes", "2"), "3 to 64 nodes"),
        (("repair", "--data-dir", str(tmp_path)), "not a zraft data dir"),
        (("run", "--id", "n4", "--bind", port.partition("=")[2], "--data-dir",
          str(tmp_path / "j"), "--join", "garbage"), "join 'garbage'"),
    ]  # fmt: skip
    for args, says in cases:
        res = zraft(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert says in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert not (tmp_path / "LOCK").exists(), "repair touched a dir that is not a data dir"


def test_keygen_refuses_to_replace_keys_without_force(tmp_path: Path) -> None:
    """A replaced secret fails authentication at the node's next start."""
    keys = tmp_path / "keys"
    assert zraft("keygen", str(keys), "--name", "n1").returncode == 0
    secret = keys / "n1.key_secret"
    first = secret.read_bytes()
    assert secret.stat().st_mode & 0o777 == 0o600
    res = zraft("keygen", str(keys), "--name", "n1")
    assert res.returncode == 2 and "--force" in res.stderr
    assert secret.read_bytes() == first
    assert zraft("keygen", str(keys), "--name", "n1", "--force").returncode == 0
    assert secret.read_bytes() != first


def test_demo_stopped_with_sigterm_ends_its_nodes() -> None:
    """SIGTERM used to end the demo without its cleanup: three node processes and a
    data dir left behind. Its nodes share its process group, which we check."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zraft.cli", "demo", "--writes", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the cluster is up and writing
            if "elected leader" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        assert "stopped every node process" in out
        time.sleep(0.5)  # process-level: let the reaped nodes leave the group table
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing is left in the demo's process group
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created, by its id
