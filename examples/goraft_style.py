"""For goraft users: register named commands with handlers at runtime, no subclassing.

goraft had ``raft.RegisterCommand(&WriteCommand{})`` and ``server.Do(cmd)``; here a plain
``StateMachine`` gets handlers by name and ``node.apply(name, *args)`` is ``Do``.
"""

from __future__ import annotations

import tempfile
import time

import zraft


def main() -> None:
    db: dict[str, str] = {}
    sm = zraft.StateMachine()
    sm.register_command("write", lambda key, value: db.__setitem__(key, value))
    sm.register_command("remove", lambda key: db.pop(key, None) is not None)
    sm.register_query("read", lambda key: db.get(key))

    addr = "tcp://127.0.0.1:7301"
    with tempfile.TemporaryDirectory() as tmp:
        node = zraft.Node(
            zraft.Config(node_id="g1", bind=addr, peers={"g1": addr}, data_dir=f"{tmp}/g1"), sm
        )
        node.on("leader_change", lambda ev: print(f"leader: {ev.prev or '-'} -> {ev.value}"))
        node.start()
        while node.status()["role"] != "leader":
            time.sleep(0.05)
        node.apply("write", "greeting", "hello")  # goraft's server.Do(WriteCommand{...})
        print("read:", node.query("read", "greeting"))
        print("removed:", node.apply("remove", "greeting"))
        node.stop()


if __name__ == "__main__":
    main()
