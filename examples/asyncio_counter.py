"""Embedding in an asyncio program: await apply/query while the node runs in its own thread."""

from __future__ import annotations

import asyncio
import tempfile

import zraft


async def main() -> None:
    addr = "tcp://127.0.0.1:7201"
    with tempfile.TemporaryDirectory() as tmp:
        node = zraft.Node(
            zraft.Config(node_id="a1", bind=addr, peers={"a1": addr}, data_dir=f"{tmp}/a1")
        )  # the built-in KV
        node.start()
        try:
            while node.status()["role"] != "leader":
                await asyncio.sleep(0.05)
            # 100 concurrent commands: the node batches them into a few log appends
            await asyncio.gather(*(node.apply_async("put", f"k{i}", i) for i in range(100)))
            total = sum([await node.query_async("get", f"k{i}") for i in range(100)])
            print("sum of values =", total)
        finally:
            node.stop()


if __name__ == "__main__":
    zraft.tune_gc()  # once the program has loaded: keeps full GC passes out of the node's turns
    asyncio.run(main())
