"""Smoke test for ``tools/bench.py``: a tiny side-by-side run as a subprocess, JSON shape only.

No performance assertion: the numbers of a shared machine mean nothing here. It
checks that both systems ran, that the output has the documented shape, and that
every temp dir the tool made (clusters, workers) is gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import bench  # type: ignore[import-not-found,unused-ignore]  # noqa: E402  (tools/ is no package)

pytest.importorskip("pysyncobj")


def test_percentile_nearest_rank() -> None:
    samples = list(range(1000, 101_000, 1000))  # 1..100 ms
    assert bench.percentile(samples, 50) == 50.0
    assert bench.percentile(samples, 99) == 99.0
    assert bench.percentile(samples, 100) == 100.0
    assert bench.percentile([], 50) is None


def test_merge_and_ratio() -> None:
    part = {
        "ok": 100,
        "errors": {"busy": 2},
        "samples_us": [1000, 3000],
        "max_us": 3000,
        "timeline": {"t_s": [0.0], "count": [100], "mean_us": [2000]},
    }
    merged = bench.merge_workers([part, part], duration_s=2.0)
    assert merged["ok"] == 200 and merged["ops_s"] == 100.0
    assert merged["errors"] == {"busy": 4}
    assert merged["max_ms"] == 3.0
    rows = [
        {"round": 1, "scenario": "clients", "system": "zraft", "kind": "zraft", "payload": 10,
         **merged},
        {"round": 1, "scenario": "clients", "system": "pso", "kind": "pysyncobj", "payload": 10,
         **{**merged, "ops_s": 50.0}},
    ]  # fmt: skip
    summary = {s["kind"]: s for s in bench.summarize(rows)}
    assert summary["zraft"]["ratio"] == 2.0
    assert summary["pysyncobj"]["ratio"] is None


def _run_bench(tmp_path: Path, args: list[str]) -> tuple[str, dict[str, Any]]:
    """Run tools/bench.py with its temp dirs under ``tmp_path``: (stdout, the JSON)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "tools" / "bench.py"), *args, "--json", str(out)]
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp.iterdir()) == [], "the tool left temp dirs behind"
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.process
def test_bench_smoke_json_shape(tmp_path: Path) -> None:
    stdout, doc = _run_bench(
        tmp_path,
        [
            "--scenario", "sequential", "--scenario", "clients", "--scenario", "memory",
            "--scenario", "embedded", "--embedded-window", "16",
            "--memory-duration", "1", "--payload", "10",
            "--rounds", "1", "--duration", "1", "--warmup", "0.3",
            "--client-procs", "1", "--window", "4",
        ],
    )  # fmt: skip
    assert {"machine", "date", "command", "settings", "notes", "summary", "results"} <= set(doc)
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["python"]
    probes = ("python_probe_warm_us", "python_probe_warm_us_at_end")
    assert all(doc["machine"][k] > 0 for k in (*probes, "python_probe_after_3ms_sleep_us"))
    assert doc["machine"]["zmq_send_warm_us"] > 0 < doc["machine"]["zmq_send_after_3ms_idle_us"]
    assert "python probe: warm" in stdout
    assert "bench.py" in doc["command"]
    kinds = {(r["scenario"], r["kind"]) for r in doc["results"]}
    scenarios = ("sequential", "clients", "memory", "embedded")
    assert kinds == {(s, k) for s in scenarios for k in ("zraft", "pysyncobj")}
    for row in doc["results"]:
        assert "failed" not in row, row
        assert row["ok"] > 0 and row["ops_s"] > 0, row
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert set(row["timeline"]) == {"t_s", "ops_s", "mean_ms"}
        if row["scenario"] == "embedded":  # the load ran inside the leader; terms are reported
            assert isinstance(row["term_delta"], int | float), row
            if row["kind"] == "zraft":  # ours kept leading (PySyncObj's may not: reported)
                assert row["term_delta"] == 0 and "lost_leadership" not in row["errors"], row
        else:
            assert 5 < row["rss_early_mb"] <= row["rss_max_mb"], row  # every node's RSS, sampled
            assert row["cpu_us_op"] > 0, row  # the nodes' CPU time over the measured window
            # the load generators', on the same cores: /proc counts 10 ms ticks, and one
            # client process with 4 in flight for 1 s on a busy host was once seen at 0
            assert row["load_cpu_us_op"] >= 0, row
            if row["kind"] == "zraft":  # the nodes' own histograms, read before and after
                assert row["fsync_p99_ms"] > 0 and row["leader_turn_p99_ms"] > 0, row
                # the longest turn and fsync of any node: where a short stall shows
                assert row["turn_max_ms"] >= row["leader_turn_p99_ms"], row
                assert row["fsync_max_ms"] >= row["fsync_p99_ms"], row
                assert row["leader_batch_mean"] >= 1 and row["leader_turns_per_append"] > 0, row
                assert row["leader_command_p99_ms"] > 0, row  # its share of the latency
    zraft_rows = [s for s in doc["summary"] if s["kind"] == "zraft"]
    assert all(s["ratio"] is not None and s["ratio"] > 0 for s in zraft_rows)
    assert "pysyncobj" in stdout and "ratio" in stdout  # the printed table
    assert "max turn <=" in stdout


@pytest.mark.process
def test_half_load_is_offered_by_one_client_with_the_same_in_flight_cap(tmp_path: Path) -> None:
    stdout, doc = _run_bench(
        tmp_path,
        [
            "--systems", "zraft", "--scenario", "half-load", "--paced-rate", "300",
            "--payload", "10", "--rounds", "1", "--duration", "1", "--warmup", "0.3",
            "--client-procs", "2", "--window", "4",
        ],
    )  # fmt: skip
    (row,) = doc["results"]
    assert row["scenario"] == "half-load" and row["offered_ops_s"] == 300
    assert row["client_procs"] == 1 and row["window_per_proc"] == 8  # 2 procs x 4 in flight
    assert row["workers_reported"] == "1/1" and row["ok"] > 0
    assert "by 1 client proc(s)" in stdout
