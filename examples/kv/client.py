"""A command-line client for the KV cluster: put, get, delete, cas.

    python examples/kv/client.py put x 1
    python examples/kv/client.py get x
    python examples/kv/client.py cas x 1 2
    python examples/kv/client.py delete x
Values are parsed as JSON when they can be (1, "a", [1,2]), else kept as strings.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import zraft

DEFAULT_ENDPOINTS = "tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--endpoints", default=DEFAULT_ENDPOINTS)
    p.add_argument(
        "--consistency", default="linearizable", choices=["linearizable", "lease", "local"]
    )
    p.add_argument("op", choices=["put", "get", "delete", "cas"])
    p.add_argument("key")
    p.add_argument("values", nargs="*")
    args = p.parse_args(argv)
    need = {"put": 1, "get": 0, "delete": 0, "cas": 2}[args.op]
    if len(args.values) != need:
        p.error(f"{args.op} takes {need} value(s)")
    values = [parse_value(v) for v in args.values]
    try:
        with zraft.Client(args.endpoints, timeout=10) as client:
            if args.op == "get":
                result = client.query("get", args.key, consistency=args.consistency)
            else:
                result = client.apply(args.op, args.key, *values)
    except zraft.ZraftError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
