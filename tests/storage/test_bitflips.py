"""Every byte of a small data dir, one flipped bit at a time: never a silent loss.

Each open must end one of three ways: a clear error naming the damage (CorruptLog,
CorruptHardState), everything intact (the .idx files are a cache, rebuilt from the
segments), or only the very last record cut (a flip there looks exactly like a torn
final write). Two of these outcomes were once wrong: a flipped length bit opened as a
torn tail, and a compacted log whose only snapshot was damaged opened without it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from conftest import all_entries, ents
from structlog.testing import capture_logs

from zraft.core.types import HardState, Membership
from zraft.storage import CorruptHardState, CorruptLog, Storage

SMALL = {"segment_bytes": 512}


def _build(base: Path) -> None:
    m = Membership(voters={"n1": "tcp://127.0.0.1:1", "n2": "tcp://127.0.0.1:2"})
    with Storage.open(base, **SMALL) as st:
        st.bootstrap(m)
        st.append(ents(1, 1, 60))
        st.sync()
        st.set_hard_state(HardState(3, "n1"))
        st.write_snapshot(30, 1, m, [b"state-at-30" * 20])
        st.compact(25)
        st.append(ents(3, 60, 80))
        st.sync()
        st.wait_deletions()


def _state(data_dir: Path) -> tuple[object, ...]:
    with Storage.open(data_dir, **SMALL) as st:
        return (all_entries(st), st.initial_state(), st.snapshot_meta())


def test_every_single_bit_flip_is_refused_harmless_or_a_torn_last_record(
    tmp_path: Path,
) -> None:
    base, work = tmp_path / "base", tmp_path / "work"
    _build(base)
    want_entries, want_hs, want_snap = _state(base)
    files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
    assert any(f.suffix == ".snap" for f in files) and any(f.suffix == ".idx" for f in files)
    outcomes: Counter[str] = Counter()
    wrong = []
    with capture_logs():  # 5k opens: keep their warnings out of the output
        for rel in files:
            raw = (base / rel).read_bytes()
            for off in range(len(raw)):
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)
                damaged = bytearray(raw)
                damaged[off] ^= 1 << (off % 8)  # every bit position, across the bytes
                (work / rel).write_bytes(bytes(damaged))
                try:
                    entries, hs, snap = _state(work)
                except (CorruptLog, CorruptHardState):
                    outcomes["refused"] += 1
                    continue
                assert isinstance(entries, list)
                if (hs, snap) == (want_hs, want_snap) and entries == want_entries:
                    outcomes["intact"] += 1
                elif (hs, snap) == (want_hs, want_snap) and entries == want_entries[:-1]:
                    outcomes["last record cut"] += 1
                else:
                    wrong.append((str(rel), off))
    assert wrong == [], f"silently changed or lost data after flips at {wrong[:10]}"
    assert outcomes["refused"] and outcomes["intact"] and outcomes["last record cut"]
