"""Snapshot installs on followers whose logs disagree with the leader's (found in review)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import zraft
from zraft.launcher import free_ports

pytestmark = pytest.mark.process


def _leader(nodes: list[zraft.Node], timeout_s: float = 20.0) -> zraft.Node:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for n in nodes:
            if n.status()["role"] == "leader":
                return n
        time.sleep(0.05)  # process-level polling with a generous bound
    raise AssertionError("no leader")


def _starter(tmp_path: Path, **options: Any) -> Callable[[str], zraft.Node]:
    """Start node n1, n2 or n3 of one 3-voter cluster on free loopback ports."""
    ports = free_ports(3)
    peers = {f"n{i}": f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports, 1)}

    def start(nid: str) -> zraft.Node:
        config = zraft.Config(
            node_id=nid, bind=peers[nid], peers=peers, data_dir=str(tmp_path / nid), **options
        )
        return zraft.Node(config, zraft.KV()).start()

    return start


def test_a_snapshot_inside_a_followers_uncommitted_tail_replaces_that_tail(
    tmp_path: Path,
) -> None:
    """An old leader, cut off, appended entries that never committed; the others moved
    on and compacted. Its snapshot's index fell inside that tail: publishing the staged
    snapshot reset the log, the core then saw the snapshot's term there, took it for an
    entry it held, never restored, and its reactor died on a compacted read."""
    node = _starter(
        tmp_path,
        snapshot_entries=0,  # only the snapshot taken below
        snapshot_trailing=0,  # and compacted right after it: a follower needs it
        segment_bytes=1024,
        check_quorum=False,  # the cut-off leader must go on appending orphans however slow
    )
    peers = ("n1", "n2", "n3")

    first = {nid: node(nid) for nid in peers}
    running = list(first.values())
    try:
        old = _leader(running)
        old.apply("put", "before", 1, timeout=10)
        others = [nid for nid in peers if nid != old.config.node_id]
        for nid in others:
            first[nid].stop()

        async def orphans() -> None:  # appended by the cut-off leader, never committed
            async def one(i: int) -> None:
                with contextlib.suppress(zraft.ZraftError):
                    await old.apply_async("put", f"orphan{i}", i, timeout=0.5)

            await asyncio.gather(*(one(i) for i in range(300)))

        asyncio.run(orphans())
        assert old.status()["last_index"] > 100
        old.stop()
        moved_on = [node(nid) for nid in others]
        running = moved_on
        new = _leader(moved_on)
        for i in range(40):
            new.apply("put", f"new{i}", i, timeout=10)
        assert new.take_snapshot(timeout=30) < old.status()["last_index"]
        back = node(old.config.node_id)
        running = [*moved_on, back]
        deadline = time.monotonic() + 30
        while back.query("get", "new39", consistency="local", timeout=5) != 39:
            assert back.status()["role"] != "stopped", "its reactor died"
            assert time.monotonic() < deadline, "the snapshot never replaced its tail"
            time.sleep(0.05)
        assert back.query("get", "orphan0", consistency="local", timeout=5) is None
    finally:
        for n in running:
            n.stop()


def test_a_follower_catches_up_by_snapshot_while_the_leader_keeps_snapshotting(
    tmp_path: Path,
) -> None:
    """A transfer that takes longer than the interval between snapshots used to restart
    with every newer snapshot and never finish (found in review: 2 MB in 512-byte
    chunks, a snapshot every ~150 entries under a steady writer)."""
    import threading

    node = _starter(
        tmp_path,
        snapshot_entries=150,
        snapshot_trailing=0,
        snapshot_chunk_bytes=512,
        segment_bytes=4096,
        fsync="never",  # the transfer's pace is the point here, not the disk's
    )

    running = [node("n1"), node("n2")]
    stop = threading.Event()
    try:
        leader = _leader(running)

        async def fill() -> None:
            blob = b"x" * 1000
            await asyncio.gather(*(leader.apply_async("put", f"big{i}", blob) for i in range(2000)))

        asyncio.run(fill())
        filled = leader.status()["commit"]  # big1999 is at or below it

        def writer() -> None:
            i = 0
            while not stop.is_set():
                with contextlib.suppress(zraft.ZraftError):
                    leader.apply("put", "counter", i, timeout=2)
                i += 1
                stop.wait(0.002)  # a steady trickle of writes (pacing, not synchronisation)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        late = node("n3")
        running.append(late)
        deadline = time.monotonic() + 90  # 4.5 s here idle, 10.5 s with the cores busy
        while late.status()["snapshot_index"] == 0:
            assert time.monotonic() < deadline, "the snapshot transfer never finished"
            time.sleep(0.1)
        # the snapshot it installed may end before big1999: the entries after it follow
        while late.status()["applied"] < filled:
            assert time.monotonic() < deadline, "no entries applied after the snapshot"
            time.sleep(0.1)
        assert late.query("get", "big1999", consistency="local", timeout=5) == b"x" * 1000
    finally:
        stop.set()
        for n in running:
            n.stop()
