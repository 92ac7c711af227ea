"""A node on a full disk refuses writes, says why, loses nothing, and recovers (issue 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zraft.client import Client
from zraft.errors import ZraftError
from zraft.launcher import free_ports

pytestmark = pytest.mark.process


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _start(
    data_dir: Path, addr: str, log: Path, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zraft.cli",
            "run",
            "--id",
            "d1",
            "--cluster",
            f"d1={addr}",
            "--data-dir",
            str(data_dir),
            "--log-format",
            "json",
            "--log-file",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def test_full_disk_refuses_writes_then_recovers(small_tmpfs: Path, tmp_path: Path) -> None:
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    data_dir, log = small_tmpfs / "d1", tmp_path / "d1.jsonl"
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (3 << 20))
    proc = _start(data_dir, addr, log, stderr=subprocess.PIPE)
    acked: list[int] = []
    try:
        with Client([addr], timeout=5) as c:
            value = b"v" * 8192
            for i in range(2000):
                try:
                    c.apply("put", f"k{i}", value)
                except ZraftError:
                    break
                acked.append(i)
        assert 0 < len(acked) < 2000, "the disk never filled"
        assert proc.wait(timeout=30) == 1, "the node should stop with status 1 on a full disk"
        assert "storage_failed" in log.read_text()
        assert proc.stderr is not None and b"its storage failed" in proc.stderr.read()
        filler.unlink()  # free space, restart: every acknowledged write is there
        proc = _start(data_dir, addr, log)
        with Client([addr], timeout=30) as c:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    c.apply("put", "after", 1)
                    break
                except ZraftError:
                    time.sleep(0.2)
            missing = [i for i in acked if c.query("get", f"k{i}") != value]
            assert not missing, f"acknowledged writes lost: {missing[:5]}"
            assert c.query("get", "after") == 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
