"""Crash consistency: SIGKILL a writer at random moments; every synced entry must survive."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, payload

from zraft.storage import Storage

pytestmark = pytest.mark.process

CHILD = r"""
import random, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # acks own stdout
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[4])
from conftest import payload
from zraft.core.types import Entry, EntryType, Membership
from zraft.storage import Storage
from zraft.storage import log as seglog

seglog.CHECKPOINT_BYTES = 1024  # index checkpoints of the tail get killed part way too
rng = random.Random(int(sys.argv[2]))
st = Storage.open(sys.argv[1], segment_bytes=4096)
last = st.last_index()
term = max(1, st.term(last)) if last >= st.first_index() - 1 else 1

def put(lo, n, term):
    st.append([Entry(term, i, EntryType.NORMAL, payload(term, i)) for i in range(lo, lo + n)])
    st.sync()
    print("A", lo, lo + n, term, flush=True)

print("R", flush=True)
while True:
    r, last, first = rng.random(), st.last_index(), st.first_index()
    snap = st.snapshot_meta()
    floor = max(first, snap.index + 1 if snap else 1)  # a snapshot's entries are committed
    if r < 0.1 and last >= floor:
        term += 1
        at = max(floor, last - rng.randint(0, 150))
        print("T", at, flush=True)
        put(at, rng.randint(1, 30), term)
    elif r < 0.14 and last > 300:
        c = last - rng.randint(100, 300)
        print("C", c, flush=True)
        if c >= floor:
            st.write_snapshot(c, st.term(c), Membership(), [b"state"])
        st.compact(c)
    else:
        put(last + 1, rng.choice([1, 7, 60]), term)
"""


def run_child(data: Path, seed: int, rng: random.Random) -> list[list[str]]:
    """Start a writer, SIGKILL it (by PID) after a random delay, return its complete lines."""
    args = [
        sys.executable,
        "-c",
        CHILD,
        str(data),
        str(seed),
        str(ROOT),
        str(Path(__file__).parent),
    ]
    # bufsize=0: no read-ahead buffer that communicate() would skip (it reads the raw fd)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"R\n", f"child did not start: {first!r}"
        time.sleep(rng.uniform(0.01, 0.25))  # the crash moment, not synchronisation
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    lines = out.decode().split("\n")
    return [ln.split() for ln in lines[:-1]]  # the last piece lacks its newline: not acked


def test_sigkill_never_loses_synced_entries(tmp_path: Path) -> None:
    data = tmp_path / "crash"
    rng = random.Random(1234)
    acked: dict[int, int] = {}
    compact_to = 0
    deadline = time.monotonic() + 25
    rounds = 0
    while rounds < 25 and time.monotonic() < deadline:
        for parts in run_child(data, rng.randrange(1 << 30), rng):
            if parts[0] == "A":
                lo, hi, term = map(int, parts[1:])
                acked.update((i, term) for i in range(lo, hi))
            elif parts[0] == "T":
                at = int(parts[1])
                for i in [i for i in acked if i >= at]:
                    del acked[i]
            elif parts[0] == "C":
                compact_to = max(compact_to, int(parts[1]))
        check(data, acked, compact_to)
        rounds += 1
    assert rounds >= 10, "too few crash rounds to mean anything"
    assert len(acked) > 100


def check(data: Path, acked: dict[int, int], compact_to: int) -> None:
    with Storage.open(data, segment_bytes=4096) as st:
        first, last = st.first_index(), st.last_index()
        assert first <= compact_to + 1
        assert last >= max(acked, default=0)
        for e in st.entries(first, last + 1, 1 << 40):
            assert e.data == payload(e.term, e.index), f"torn or misplaced entry {e.index}"
            if e.index in acked:
                assert e.term == acked[e.index], f"acked entry {e.index} replaced"
        for i in acked:
            if i >= first:
                assert st.term(i) == acked[i]
