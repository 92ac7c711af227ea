"""Every example runs as documented (subprocess) and does what it says."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zraft.launcher import free_ports

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]


def run_example(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_counter_example() -> None:
    res = run_example("examples/counter.py")
    assert res.returncode == 0, res.stderr
    assert "counter = 10" in res.stdout


def test_asyncio_example() -> None:
    res = run_example("examples/asyncio_counter.py")
    assert res.returncode == 0, res.stderr
    assert f"sum of values = {sum(range(100))}" in res.stdout


def test_goraft_style_example() -> None:
    res = run_example("examples/goraft_style.py")
    assert res.returncode == 0, res.stderr
    assert "read: hello" in res.stdout and "removed: True" in res.stdout


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_kv_cluster_and_client(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    while port > 60000 or not _free(port + 1) or not _free(port + 2):  # three in a row
        port = free_ports(1)[0]
    eps_file = tmp_path / "endpoints"
    proc = subprocess.Popen(
        [
            sys.executable,
            "examples/kv/cluster.py",
            "--nodes",
            "3",
            "--base-port",
            str(port),
            "--endpoints-file",
            str(eps_file),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not eps_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert eps_file.exists(), "the cluster did not come up"
        eps = eps_file.read_text()

        def kv(*args: str) -> str:
            res = run_example("examples/kv/client.py", "--endpoints", eps, *args)
            assert res.returncode == 0, res.stderr
            return res.stdout.strip()

        assert kv("put", "x", "1") == "null"
        assert kv("get", "x") == "1"
        assert kv("cas", "x", "1", "2") == "true"
        assert kv("cas", "x", "1", "3") == "false"
        assert kv("get", "x") == "2"
        assert kv("delete", "x") == "true"
        assert kv("get", "x") == "null"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in out


def test_the_readmes_embedding_snippet_runs_as_written(tmp_path: Path) -> None:
    """A newcomer pastes it first: it must run (once it applied before any election had
    ended and raised NotLeaderError). Only the port is changed, to a free one."""
    import re

    text = (ROOT / "README.md").read_text()
    found = re.search(r"## Embedding\n\n```python\n(.*?)```", text, re.S)
    assert found, "the README's Embedding section starts with a python block"
    code = found.group(1).replace("127.0.0.1:7001", f"127.0.0.1:{free_ports(1)[0]}")
    code += '\nassert node.status()["role"] == "stopped"\nprint("snippet ok")\n'
    (tmp_path / "snippet.py").write_text(code)
    res = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0 and "snippet ok" in res.stdout, res.stderr[-2000:]
