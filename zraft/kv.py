"""The built-in replicated key-value store: the default app of ``zraft run``."""

from __future__ import annotations

from typing import Any

import msgpack

from zraft.statemachine import StateMachine, command, query


class KV(StateMachine):
    """A dict of msgpack-able keys to values, with compare-and-set."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[Any, Any] = {}

    @command
    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value

    @command
    def delete(self, key: Any) -> bool:
        """Remove ``key``; True if it was there."""
        return self.data.pop(key, _MISSING) is not _MISSING

    @command
    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` iff its value is ``expected`` (None = absent)."""
        if self.data.get(key) != expected:
            return False
        self.data[key] = new
        return True

    @command
    def incr(self, key: Any, delta: int = 1) -> int:
        """Add ``delta`` to an integer value (absent = 0) and return the new value."""
        value = int(self.data.get(key, 0)) + delta
        self.data[key] = value
        return value

    @query
    def get(self, key: Any) -> Any:
        return self.data.get(key)

    @query
    def keys(self) -> list[Any]:
        return sorted(self.data, key=repr)

    @query
    def size(self) -> int:
        return len(self.data)

    def snapshot(self) -> bytes:
        packed: bytes = msgpack.packb(list(self.data.items()), use_bin_type=True)
        return packed

    def restore(self, data: bytes) -> None:
        items = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False)
        self.data = dict(items)


_MISSING = object()
