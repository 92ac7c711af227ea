"""Benchmark the per-write encode/decode work, warm, in one process.

Every write crosses the codec several times: the client encodes a request, the leader
decodes it and encodes the command, every node decodes the command it applies, and
replies go back in batches. These are the warm costs (caches hot); a node under light
load pays a few times more per operation. Not a test: numbers depend on the machine.

    python tools/bench_codec.py            # table, microseconds per item
    python tools/bench_codec.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zraft import codec
from zraft.core.types import AppendEntries, Entry, EntryType
from zraft.node import Outcome
from zraft.protocol import ClientReply, ClientRequest

CLUSTER = "zraft"
REPEATS = 5  #: best of this many timings: the least disturbed one


def cases(payload_bytes: int) -> list[tuple[str, int, Callable[[], object]]]:
    """(name, items per call, call): each call's best time is divided by its items."""
    client_id = os.urandom(16)
    value = os.urandom(payload_bytes)
    req = ClientRequest(7, "apply", "put", ("w1:123", value), client_id, 99)
    req_frame = codec.encode(req, CLUSTER)
    replies = [ClientReply(i, True, None) for i in range(25)]
    reply_frame = codec.encode_batch(replies, CLUSTER)
    command = codec.encode_command(client_id, 99, "put", ("w1:123", value))
    ents = tuple(Entry(3, 100 + i, EntryType.NORMAL, command) for i in range(25))
    append_frame = codec.encode(AppendEntries(3, "n1", "n2", 99, 3, ents, 90), CLUSTER)
    outcome = Outcome(True, None)
    put = ("k", value)
    ae, enc, dec = append_frame, codec.encode_batch, codec.decode_many
    return [
        ("client: build a request", 1, lambda: ClientRequest(7, "apply", "put", put)),
        ("client: encode a request", 1, lambda: codec.encode(req, CLUSTER)),
        ("leader: decode a request", 1, lambda: codec.decode_many(req_frame, CLUSTER)),
        ("leader: encode its command", 1, lambda: codec.encode_command(client_id, 9, "put", put)),
        ("follower: decode AppendEntries, per entry (25)", 25, lambda: codec.decode(ae, CLUSTER)),
        ("every node: decode a command to apply", 1, lambda: codec.decode_command(command)),
        ("leader: build a reply", 1, lambda: outcome.to_reply(5)),
        ("leader: encode replies, per reply (25)", 25, lambda: enc(replies, CLUSTER)),
        ("client: decode replies, per reply (25)", 25, lambda: dec(reply_frame, CLUSTER)),
    ]  # fmt: skip


def measure(fn: Callable[[], object], items: int, budget_s: float) -> float:
    """Best microseconds per item over REPEATS timings of about ``budget_s`` each."""
    number = max(1, int(budget_s / max(timeit.timeit(fn, number=20) / 20, 1e-7)))
    best = min(timeit.repeat(fn, number=number, repeat=REPEATS))
    return best / number / items * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payload", type=int, default=1024, help="value bytes (default 1024)")
    p.add_argument("--budget", type=float, default=0.05, help="seconds per timing")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not 0 <= a.payload <= 1 << 20 or not 0 < a.budget <= 5:
        p.error("--payload in [0, 1 MiB], --budget in (0, 5] s")
    rows = [(name, round(measure(fn, n, a.budget), 2)) for name, n, fn in cases(a.payload)]
    if a.json:
        doc: dict[str, Any] = {
            "python": platform.python_version(),
            "payload_bytes": a.payload,
            "us_per_item": dict(rows),
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"codec, warm, {a.payload}-byte values, python {platform.python_version()}")
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"  {name:<{width}}  {us:8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
