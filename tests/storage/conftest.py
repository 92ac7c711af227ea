"""Shared helpers for the storage tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from zraft.core.types import Entry, EntryType  # noqa: E402
from zraft.storage import Storage  # noqa: E402


def payload(term: int, index: int) -> bytes:
    """Deterministic, variable-length data so a misplaced byte cannot go unnoticed."""
    return (f"t{term}i{index}|" * (1 + (index * 7 + term) % 5)).encode()


def ent(term: int, index: int, typ: EntryType = EntryType.NORMAL) -> Entry:
    return Entry(term, index, typ, payload(term, index))


def ents(term: int, lo: int, hi: int) -> list[Entry]:
    return [ent(term, i) for i in range(lo, hi)]


def all_entries(st: Storage) -> list[Entry]:
    return st.entries(st.first_index(), st.last_index() + 1, 1 << 40)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "data"
    yield d
