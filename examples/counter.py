"""Minimal embedding: a replicated counter with custom handlers, three nodes in one process."""

from __future__ import annotations

import tempfile
import time

import zraft


class Counter(zraft.StateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    @zraft.command
    def add(self, n: int) -> int:
        self.value += n
        return self.value

    @zraft.query
    def read(self) -> int:
        return self.value

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        self.value = int(data)


def main() -> None:
    peers = {f"n{i}": f"tcp://127.0.0.1:{7100 + i}" for i in (1, 2, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [
            zraft.Node(
                zraft.Config(node_id=n, bind=a, peers=peers, data_dir=f"{tmp}/{n}"), Counter()
            ).start()
            for n, a in peers.items()
        ]
        while not (leaders := [n for n in nodes if n.status()["role"] == "leader"]):
            time.sleep(0.05)
        for _ in range(10):
            leaders[0].apply("add", 1)
        print("counter =", leaders[0].query("read"))
        for node in nodes:
            node.stop()


if __name__ == "__main__":
    main()
