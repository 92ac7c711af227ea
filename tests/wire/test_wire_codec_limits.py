"""A crafted frame's decode cost: big frames decode with the cyclic GC off (review)."""

from __future__ import annotations

import gc
from typing import Any

import msgpack
import pytest

from zraft import codec


def test_big_frames_decode_with_collections_off_and_restore_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Millions of tiny arrays made each allocation-triggered collection walk them all."""
    seen: list[bool] = []
    real = msgpack.unpackb

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(codec.msgpack, "unpackb", spy)
    crafted = b"\x94\x01\xb0not-this-cluster\x10\xdd" + (200_000).to_bytes(4, "big")
    crafted += b"\x90" * 200_000
    assert gc.isenabled()
    with pytest.raises(codec.DecodeError):
        codec.decode(crafted, "zraft")
    assert seen == [False] and gc.isenabled()
    with pytest.raises(codec.DecodeError):
        codec.decode(b"\x94\x01", "zraft")  # small: decoded as usual
    assert seen == [False, True] and gc.isenabled()
    gc.disable()  # an embedder that runs without the collector keeps it off
    try:
        with pytest.raises(codec.DecodeError):
            codec.decode(crafted, "zraft")
        assert not gc.isenabled()
    finally:
        gc.enable()
