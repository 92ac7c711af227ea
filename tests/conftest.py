"""Shared fixtures: local clusters that always end their processes by PID and remove their data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from zraft.launcher import LocalCluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(3, base_dir=tmp_path / "c3")
    try:
        c.start()
        yield c
    finally:
        c.close()
