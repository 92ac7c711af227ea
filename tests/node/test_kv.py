"""The built-in KV state machine's snapshot stream: same bytes however it is packed."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from zraft.kv import KV, _pack_pairs

keys = st.one_of(st.text(max_size=8), st.integers(-(1 << 40), 1 << 40), st.binary(max_size=8))
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.binary(max_size=64),
    st.text(max_size=16), st.lists(st.integers(-1000, 1000), max_size=4),
)  # fmt: skip


def _pair_by_pair(items: list[tuple[Any, Any]]) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(packer.pack(list(item)) for item in items)


@settings(max_examples=60)
@given(st.dictionaries(keys, values, max_size=40), st.integers(1, 200))
def test_pairs_stream_equals_pair_by_pair_packing(data: dict[Any, Any], chunk: int) -> None:
    items = list(data.items())
    chunks = list(_pack_pairs(items, chunk_bytes=chunk))
    assert b"".join(chunks) == _pair_by_pair(items)
    kv = KV()
    kv.restore_chunks(iter(chunks))
    assert kv.data == data


def test_a_restored_node_compares_list_values_as_replaying_nodes_do() -> None:
    """Commands decode arrays as lists; a snapshot must restore them as lists too, or the
    same committed cas succeeds on one replica and fails on another."""
    from zraft import codec

    replayed = KV()
    replayed.put("b", [1, 2])
    restored = KV()
    restored.restore_chunks(iter(replayed.snapshot()))
    entry = codec.encode_command(b"c", 1, "cas", ("b", [1, 2], "x"))
    args = codec.decode_command(entry)[3]
    assert replayed.cas(*args) is True and restored.cas(*args) is True
    assert replayed.data == restored.data == {"b": "x"}


def test_array_header_sizes_at_the_pack_boundaries() -> None:
    """fixarray below 16 pairs, array16 from 16: both headers are stripped right."""
    for n in (0, 1, 15, 16, 17, 1023, 1024, 1025, 2049):
        items = [(f"k{i}", b"v" * (i % 7)) for i in range(n)]
        assert b"".join(_pack_pairs(items, chunk_bytes=1 << 20)) == _pair_by_pair(items), n


def test_snapshot_and_restore_round_trip() -> None:
    kv = KV()
    for i in range(3000):
        kv.put(f"key-{i}", b"x" * (i % 50))
    restored = KV()
    restored.restore_chunks(iter(kv.snapshot()))
    assert restored.data == kv.data


def test_big_values_are_packed_a_few_per_call() -> None:
    """One C call holds the GIL for all it packs: big values go in small groups."""
    from unittest import mock

    import zraft.kv as kvmod

    items = [(f"blob-{i}", b"x" * (1 << 20)) for i in range(12)]
    sizes: list[int] = []
    real = msgpack.packb

    def spy(obj: Any, **kw: Any) -> bytes:
        sizes.append(len(obj))
        out: bytes = real(obj, **kw)
        return out

    with mock.patch.object(kvmod.msgpack, "packb", spy):
        stream = b"".join(_pack_pairs(items))
    assert stream == _pair_by_pair(items)
    assert max(sizes) == 1, sizes  # 1 MiB values: one pair per call


def test_get_hands_out_a_copy_of_a_container_value() -> None:
    kv = KV()
    kv.put("k", [1, {"a": [2]}])
    got = kv.get("k")
    got.append("oops")
    got[1]["a"].append(3)
    assert kv.get("k") == [1, {"a": [2]}]
    assert kv.cas("k", [1, {"a": [2]}], "new") is True  # as on every other replica
