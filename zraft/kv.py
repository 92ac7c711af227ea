"""The built-in replicated key-value store: the default app of ``zraft run``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
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
        """The value, copied when it is a container: an embedding caller that changed the
        stored object itself would change this replica's state and no other's."""
        value = self.data.get(key)
        return copy.deepcopy(value) if isinstance(value, list | dict) else value

    @query
    def keys(self) -> list[Any]:
        return sorted(self.data, key=repr)

    @query
    def size(self) -> int:
        return len(self.data)

    def snapshot(self) -> Iterator[bytes]:
        """A stream of msgpack ``[key, value]`` pairs in ~1 MiB chunks, over a copy of the items.

        Copying the item list is cheap (references) and makes the stream immune to
        commands applied while a helper thread writes it; values are never mutated
        in place by the commands above.
        """
        return _pack_pairs(list(self.data.items()))

    def restore(self, data: bytes) -> None:
        self.restore_chunks(iter([data]))

    def restore_chunks(self, chunks: Iterator[bytes]) -> None:
        """Parse pairs as chunks arrive: memory stays near one chunk beyond the state."""
        # lists stay lists, as commands decode them: a restored node must compare values
        # (cas) exactly as nodes that replayed the log do
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, use_list=True, max_buffer_size=64 << 20
        )
        data: dict[Any, Any] = {}
        for chunk in chunks:
            unpacker.feed(chunk)
            for key, value in unpacker:
                data[key] = value
        self.data = data


_PAIRS_PER_PACK = 1024  #: at most this many pairs per C call (an array16 header: 3 bytes)
_PACK_BYTES = 256 << 10  #: aim for about this much per C call: it holds the GIL throughout


def _pack_pairs(items: list[tuple[Any, Any]], chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The stream of msgpack ``[key, value]`` pairs, in chunks of about ``chunk_bytes``.

    An array's encoding is its header followed by its items' encodings, so packing
    many pairs as one array and dropping the header yields the same stream in one C
    call; packing pair by pair in Python held the GIL against the reactor for tens of
    ms per snapshot of a few MB. One C call holds the GIL for all its bytes, though, so
    the group size follows the pairs' size: about ``_PACK_BYTES`` per call (a 100 MB
    state of 1 MB values packed in one call had stopped the reactor's heartbeats).
    """
    buf: list[bytes] = []
    size = 0
    lo, n = 0, 1
    while lo < len(items):
        part = items[lo : lo + n]
        lo += len(part)
        packed: bytes = msgpack.packb(part, use_bin_type=True)
        header = 1 if len(part) < 16 else 3  # fixarray / array16 (n <= 1024 < 65536)
        buf.append(packed[header:])
        body = len(packed) - header
        size += body
        n = max(1, min(_PAIRS_PER_PACK, _PACK_BYTES * len(part) // max(1, body)))
        if size >= chunk_bytes:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


_MISSING = object()
