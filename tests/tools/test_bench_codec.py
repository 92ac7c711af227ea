"""Smoke test for ``tools/bench_codec.py``: every case runs and reports a time (no speed claim)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import bench_codec  # type: ignore[import-not-found,unused-ignore]  # noqa: E402


def test_every_case_reports_a_positive_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_codec.main(["--budget", "0.001", "--payload", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["payload_bytes"] == 10
    names = [name for name, _, _ in bench_codec.cases(10)]
    assert list(doc["us_per_item"]) == names and len(names) == 9
    assert all(us > 0 for us in doc["us_per_item"].values())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench_codec.main(["--budget", "0"])
