"""Benchmark the durable log: fsync'd appends/s per batch size and open time vs log size.

Not a test: numbers depend on the disk. Example::

    python tools/bench_storage.py                 # table
    python tools/bench_storage.py --json          # machine readable
    python tools/bench_storage.py --open-sizes 100000 --seconds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zraft.core.types import Entry, EntryType
from zraft.storage import Storage

MAX_SECONDS = 60.0
MAX_OPEN_SIZE = 10_000_000


def bench_appends(root: Path, batch: int, entry_bytes: int, seconds: float) -> dict[str, Any]:
    """Append+sync batches of ``batch`` entries for ``seconds`` with fsync="always"."""
    d = root / f"append-{batch}"
    data = os.urandom(entry_bytes)
    with Storage.open(d) as st:
        index, syncs = 1, 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            st.append([Entry(1, index + k, EntryType.NORMAL, data) for k in range(batch)])
            st.sync()
            index, syncs = index + batch, syncs + 1
        elapsed = time.perf_counter() - started
    shutil.rmtree(d)
    return {
        "batch": batch,
        "entries_per_s": round((index - 1) / elapsed),
        "syncs_per_s": round(syncs / elapsed, 1),
        "mean_sync_ms": round(elapsed / syncs * 1000, 3),
    }


def build_log(d: Path, n: int, entry_bytes: int, segment_bytes: int) -> None:
    """Write ``n`` entries quickly (fsync off: only the open is measured)."""
    data = os.urandom(entry_bytes)
    chunk = 10_000
    with Storage.open(d, fsync="never", segment_bytes=segment_bytes) as st:
        for lo in range(1, n + 1, chunk):
            hi = min(n + 1, lo + chunk)
            st.append([Entry(1 + lo // 100_000, i, EntryType.NORMAL, data) for i in range(lo, hi)])
            st.sync()  # as a node would: checkpoints the tail index every 8 MiB
        st.sync()


def bench_open(
    root: Path, n: int, entry_bytes: int, segment_bytes: int, repeats: int
) -> dict[str, Any]:
    d = root / f"open-{n}"
    build_log(d, n, entry_bytes, segment_bytes)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        st = Storage.open(d, segment_bytes=segment_bytes)
        times.append(time.perf_counter() - started)
        assert st.last_index() == n
        segments, disk = st.segment_count(), st.disk_bytes()
        st.close()
    shutil.rmtree(d)
    return {
        "entries": n,
        "segments": segments,
        "disk_mib": round(disk / (1 << 20), 1),
        "open_ms_median": round(statistics.median(times) * 1000, 1),
        "open_ms_max": round(max(times) * 1000, 1),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dir", type=Path, help="where to write (default: a temp dir)")
    p.add_argument("--batches", default="1,16,256", help="append batch sizes")
    p.add_argument("--entry-bytes", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    p.add_argument("--open-sizes", default="100000,1000000", help="log sizes to open")
    p.add_argument("--segment-bytes", type=int, default=64 << 20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    # an application configures logging: keep warnings, on stderr, off the table
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    sizes = [int(x) for x in args.open_sizes.split(",") if x]
    if any(not 0 < n <= MAX_OPEN_SIZE for n in sizes):
        p.error(f"--open-sizes must be in (0, {MAX_OPEN_SIZE}]")
    root = Path(tempfile.mkdtemp(prefix="zraft-bench-", dir=args.dir))
    try:
        appends = [
            bench_appends(root, int(b), args.entry_bytes, args.seconds)
            for b in args.batches.split(",")
            if b
        ]
        opens = [
            bench_open(root, n, args.entry_bytes, args.segment_bytes, args.repeats) for n in sizes
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "entry_bytes": args.entry_bytes,
        "appends_fsync_always": appends,
        "open": opens,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"cpu: {r['cpu']} x{r['nproc']}  python {r['python']}  entry {r['entry_bytes']} B")
    print(f"{'batch':>6} {'entries/s':>12} {'syncs/s':>9} {'ms/sync':>9}")
    for a in r["appends_fsync_always"]:
        row = (a["batch"], a["entries_per_s"], a["syncs_per_s"], a["mean_sync_ms"])
        print(f"{row[0]:>6} {row[1]:>12} {row[2]:>9} {row[3]:>9}")
    print(f"{'entries':>9} {'segments':>9} {'MiB':>7} {'open ms':>9} {'max ms':>8}")
    for o in r["open"]:
        cols = (o["entries"], o["segments"], o["disk_mib"], o["open_ms_median"], o["open_ms_max"])
        print(f"{cols[0]:>9} {cols[1]:>9} {cols[2]:>7} {cols[3]:>9} {cols[4]:>8}")


if __name__ == "__main__":
    raise SystemExit(main())
