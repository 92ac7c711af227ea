"""Codec: every message round-trips; any hostile bytes give DecodeError and nothing else."""

from __future__ import annotations

import contextlib
import enum
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_strategies import append_entries, client_replies, client_requests, messages, values

from zraft import codec
from zraft.codec import (
    MAX_ENTRIES,
    VERSION,
    DecodeError,
    decode,
    decode_command,
    encode,
    encode_append,
    encode_command,
    pack_entries,
)
from zraft.core.types import (
    AppendEntries,
    AppendResponse,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from zraft.protocol import MAX_TIMEOUT_MS, ClientReply, ClientRequest

CID = "test-cluster"
MEMBERS = Membership(
    voters={"n1": "tcp://127.0.0.1:1", "n2": "tcp://127.0.0.1:2"}, learners={"n3": "x"}
)
META = SnapshotMeta(index=10, term=3, membership=MEMBERS, size=1234, crc32=0xDEADBEEF)
ENTRIES = (
    Entry(2, 5, EntryType.NORMAL, b"cmd"),
    Entry(3, 6, EntryType.NOOP, b""),
    Entry(3, 7, EntryType.CONFIG, MEMBERS.encode()),
)

EXAMPLES: list[Any] = [
    AppendEntries(3, "n1", "n2", 4, 2, ENTRIES, 6),
    AppendEntries(3, "n1", "n2", 0, 0, (), 0),
    AppendResponse(3, "n2", "n1", 7),
    AppendResponse(3, "n2", "n1", 4, reject=True, hint_term=2, hint_index=3),
    RequestVote(4, "n2", "n1", 7, 3, pre_vote=True, transfer=False),
    VoteResponse(4, "n1", "n2", granted=True, pre_vote=True),
    Heartbeat(3, "n1", "n2", 6, ctx=b"\x00\x01"),
    HeartbeatResponse(3, "n2", "n1", ctx=b"r"),
    InstallSnapshot(3, "n1", "n2", META, 0, b"\x00" * 100, False),
    SnapshotResponse(3, "n2", "n1", 10, 100, done=True, reject=False),
    TimeoutNow(3, "n1", "n2"),
    ClientRequest(1, "apply", "incr", ("k", 1, [1, 2], {"a": b"b"}), b"cid", 7),
    ClientRequest(2, "query", "get", ("k",), consistency="lease", timeout_ms=10),
    ClientReply(1, True, result={"x": [1, 2.5, None]}),
    ClientReply(2, False, error="not_leader", message="ask n1", leader="n1", leader_address="a"),
]


def reason_of(data: bytes, **kw: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(data, CID, **kw)
    return info.value.reason


def envelope(tag: int, *fields: Any, cluster: Any = CID, version: Any = VERSION) -> bytes:
    out: bytes = msgpack.packb([version, cluster, tag, *fields], use_bin_type=True)
    return out


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: Any) -> None:
    back = decode(encode(msg, CID), CID)
    assert back == msg
    assert type(back) is type(msg)


def test_entries_come_back_as_entry_tuples_with_entry_type() -> None:
    back = decode(encode(EXAMPLES[0], CID), CID)
    assert isinstance(back, AppendEntries)
    for e in back.entries:
        assert type(e) is Entry
        assert type(e.type) is EntryType
        assert type(e.data) is bytes


def test_snapshot_meta_and_membership_round_trip() -> None:
    back = decode(encode(EXAMPLES[8], CID), CID)
    assert isinstance(back, InstallSnapshot)
    assert back.meta == META
    assert back.meta.membership.learners == {"n3": "x"}


def test_a_pending_promotion_travels_with_snapshot_metadata() -> None:
    m = Membership(voters=MEMBERS.voters, learners=MEMBERS.learners, promote=("n3",))
    meta = SnapshotMeta(10, 3, m, 1234, 7)
    back = decode(encode(InstallSnapshot(3, "n1", "n2", meta, 0, b"", False), CID), CID)
    assert isinstance(back, InstallSnapshot) and back.meta.membership.promote == ("n3",)
    assert Membership.decode(m.encode()) == m
    assert b"promote" not in MEMBERS.encode(), "without one, the bytes are as before"
    bad = InstallSnapshot(3, "n1", "n2", meta, 0, b"", False)
    wire = encode(bad, CID).replace(b"\xa2n3\xa1x\x91\xa2n3", b"\xa2n3\xa1x\x91\xa2n9")
    assert reason_of(wire) == "bad_membership", "only learners can await promotion"
    with pytest.raises(ValueError, match="promote"):
        Membership.decode(b'{"voters": {"a": "x"}, "learners": {}, "promote": ["a"]}')


def test_wrong_cluster_is_its_own_reason() -> None:
    assert reason_of(encode(EXAMPLES[0], "other-cluster")) == "wrong_cluster"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_msgpack"),
        (b"\xc1", "bad_msgpack"),
        (b"\x91" * 100_000, "bad_msgpack"),  # nesting bomb
        (b"\xdd\xff\xff\xff\xff", "bad_msgpack"),  # claims 4G elements
        (msgpack.packb({"a": 1}), "bad_envelope"),
        (msgpack.packb([1, CID]), "bad_envelope"),
        (envelope(11, cluster=CID, version=2), "bad_version"),
        (envelope(11, version=True), "bad_version"),
        (envelope(99, 1, "a", "b"), "unknown_tag"),
        (envelope(True, 1, "a", "b"), "unknown_tag"),
        (envelope(9, 1, "a"), "bad_field_count"),
        (envelope(9, 1, "a", "b", 4), "bad_field_count"),
        (envelope(9, -1, "a", "b"), "bad_field"),
        (envelope(9, 1 << 63, "a", "b"), "bad_field"),
        (envelope(9, 1.0, "a", "b"), "bad_field"),
        (envelope(9, True, "a", "b"), "bad_field"),
        (envelope(9, 1, "", "b"), "bad_field"),
        (envelope(9, 1, "a" * 1000, "b"), "bad_field"),
        (envelope(9, 1, b"a", "b"), "bad_field"),
        (envelope(9, 1, "a", "a"), "bad_field"),
        (envelope(4, 1, "a", "b", 1, 0), "bad_field"),  # granted must be bool
        (envelope(5, 1, "a", "b", 0, "ctx"), "bad_field"),  # ctx must be bytes
        (envelope(5, 1, "a", "b", 0, b"x" * 5000), "bad_field"),
        (msgpack.packb([1, CID, 9, 1, "a", "b", msgpack.ExtType(5, b"")]), "bad_msgpack"),
    ],
)
def test_hostile_envelopes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def ae(prev_index: int, prev_term: int, entries: Any, term: int = 5) -> bytes:
    return envelope(1, term, "a", "b", prev_index, prev_term, entries, 0)


@pytest.mark.parametrize(
    "entries",
    [
        "nope",
        [[1, 1, 0]],  # too short
        [(1, 1, 0, b"", 9)],
        [[1, 1, 0, "str data"]],
        [[1, 1, 7, b""]],  # unknown EntryType
        [[1, 1, True, b""]],
        [[1, 1, -1, b""]],
        [[1, 2, 0, b""]],  # not contiguous after prev_index 0
        [[1, 1, 0, b""], [1, 3, 0, b""]],  # gap
        [[2, 1, 0, b""], [1, 2, 0, b""]],  # term goes backwards
        [[9, 1, 0, b""]],  # entry term above message term
        [[1, 1, 2, b"not json"]],  # CONFIG that is no membership
        [[1, 1, 2, b"[1]"]],
        [[1, 1, 2, b'{"voters": {"a": "x"}, "learners": {"a": "y"}}']],
        [[1, 1, 2, Membership(voters={"a" * 500: "x"}).encode()]],
        [[1, 1, 0, b""]] * (MAX_ENTRIES + 1),
    ],
)
def test_bad_entries_are_rejected(entries: Any) -> None:
    assert reason_of(ae(0, 0, entries)) in {"bad_entries", "bad_field"}


def test_prev_term_above_term_is_rejected() -> None:
    assert reason_of(ae(0, 9, [])) == "bad_field"


@pytest.mark.parametrize(
    "meta",
    [
        [1, 1, [{}, {}], 0],
        [1, 1, [{}, {}], 0, 1 << 32],
        [1, 1, [{"a": "x"}, {"a": "y"}], 0, 0],
        [1, 1, [{"": "x"}, {}], 0, 0],
        [1, 1, [{"a": 1}, {}], 0, 0],
        [1, 1, [[], {}], 0, 0],
        [1, 1, {"voters": {}}, 0, 0],
    ],
)
def test_bad_snapshot_meta_is_rejected(meta: Any) -> None:
    data = envelope(7, 1, "a", "b", meta, 0, b"", False)
    assert reason_of(data) in {"bad_snapshot_meta", "bad_membership", "bad_field"}


@pytest.mark.parametrize(
    "fields",
    [
        [1, "delete_everything", "", [], b"", 0, "linearizable", 10],
        [1, "apply", "", [], b"", 0, "stale", 10],
        [1, "apply", "", "args", b"", 0, "linearizable", 10],
        [1, "apply", "", [], "cid", 0, "linearizable", 10],
        [1, "apply", "", [], b"", 0, "linearizable", 0],
        [1, "apply", "", [], b"", 0, "linearizable", 10**12],
    ],
)
def test_bad_client_requests_are_rejected(fields: list[Any]) -> None:
    assert reason_of(envelope(16, *fields)) == "bad_field"


@pytest.mark.parametrize(
    "fields",
    [
        [1, True, None, "not_leader", "", "", ""],
        [1, False, None, "", "", "", ""],
        [1, False, None, "made_up", "", "", ""],
        [1, 1, None, "", "", "", ""],
    ],
)
def test_bad_client_replies_are_rejected(fields: list[Any]) -> None:
    assert reason_of(envelope(17, *fields)) == "bad_field"


def test_huge_frames_are_rejected_before_parsing() -> None:
    big = encode(InstallSnapshot(1, "a", "b", META, 0, b"x" * 4096, False), CID)
    assert reason_of(big, max_bytes=1024) == "too_large"
    assert isinstance(decode(big, CID, max_bytes=len(big)), InstallSnapshot)


def test_decode_accepts_memoryview() -> None:
    data = encode(EXAMPLES[0], CID)
    assert decode(memoryview(data), CID) == EXAMPLES[0]


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_random_messages_round_trip(msg: Any) -> None:
    assert decode(encode(msg, CID), CID) == msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(append_entries(), st.text(min_size=1, max_size=40))
def test_entries_packed_once_give_the_same_bytes(msg: AppendEntries, cluster_id: str) -> None:
    """The leader packs entries once for all followers; the frame must not change."""
    shared = pack_entries(msg.entries)
    assert encode_append(msg, cluster_id, shared) == encode(msg, cluster_id)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_give_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, CID)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_truncation_is_a_decode_error(msg: Any) -> None:
    data = encode(msg, CID)
    for cut in range(len(data) - 1, -1, -max(1, len(data) // 40)):
        with pytest.raises(DecodeError):
            decode(data[:cut], CID)


def _decodes_to_valid_or_fails(data: bytes) -> None:
    """Either DecodeError, or a message that re-encodes and decodes to itself."""
    try:
        msg = decode(data, CID)
    except DecodeError:
        return
    assert decode(encode(msg, CID), CID) == msg


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_encodings_give_decode_error_or_a_valid_message(
    msg: Any, data: st.DataObject
) -> None:
    raw = bytearray(encode(msg, CID))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    _decodes_to_valid_or_fails(bytes(raw))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_fields_of_wrong_type_give_decode_error_or_a_valid_message(
    msg: Any, data: st.DataObject
) -> None:
    fields = msgpack.unpackb(encode(msg, CID), raw=False)
    pos = data.draw(st.integers(0, len(fields) - 1))
    fields[pos] = data.draw(values)
    if data.draw(st.booleans()):
        fields = fields[: data.draw(st.integers(0, len(fields)))]
    _decodes_to_valid_or_fails(msgpack.packb(fields, use_bin_type=True))


# --------------------------------------------------------------------------- commands


@settings(max_examples=200)
@given(
    st.binary(max_size=32),
    st.integers(0, (1 << 63) - 1),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.lists(values, max_size=4),
)
def test_commands_round_trip(client_id: bytes, seq: int, name: str, args: list[Any]) -> None:
    assert decode_command(encode_command(client_id, seq, name, tuple(args))) == (
        client_id,
        seq,
        name,
        tuple(args),
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x93",
        msgpack.packb([2, b"", 1, "n", []]),
        msgpack.packb([1, "cid", 1, "n", []]),
        msgpack.packb([1, b"", -1, "n", []]),
        msgpack.packb([1, b"", 1, "", []]),
        msgpack.packb([1, b"", 1, "n", {}]),
        msgpack.packb([1, b"", 1, "n"]),
    ],
)
def test_malformed_commands_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_command(data)


@settings(max_examples=300)
@given(st.binary(max_size=100))
def test_random_command_bytes_give_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_command(data)


def test_int_map_keys_are_refused_unless_the_client_opts_in() -> None:
    data = encode(ClientReply(1, True, result={1: "one"}), CID)
    assert reason_of(data) == "bad_msgpack"
    assert decode(data, CID, strict_map_key=False) == ClientReply(1, True, result={1: "one"})


# --------------------------------------------------------------------------- fast path

_EDGES_LIST: list[Any] = [
    *(-1, 0, 1, True, False, (1 << 63) - 1, 1 << 63, MAX_TIMEOUT_MS, MAX_TIMEOUT_MS + 1),
    *("", "apply", "query", "lease", "not_leader", "busy", "x" * 129, "x" * 257),
    *("x" * 1025, "x" * ((64 << 10) + 1), b"", b"x" * 257, [], [1] * 4097, None, 1.5),
]


def _fast_and_checked_agree(tag: int, body: list[Any]) -> None:
    fast = codec._valid_request(body) if tag == 16 else codec._valid_reply(body)
    try:
        checked = codec._decode_checked(tag, body)
    except DecodeError:
        assert fast is None, f"the fast path took what the schema refuses: {body!r:.200}"
        return
    assert fast is not None, f"the fast path refused a valid message: {body!r:.200}"
    assert type(fast) is type(checked) and fast == checked
    assert [type(v) for v in fast] == [type(v) for v in checked]


def test_a_client_message_tag_must_be_an_int() -> None:
    """msgpack also carries 16.0; the fast path must not take what the schema refuses."""
    assert reason_of(envelope(16.0, 1, "apply", "", [], b"", 0, "linearizable", 10)) == (
        "unknown_tag"
    )
    assert reason_of(envelope(17.0, 1, True, None, "", "", "", "")) == "unknown_tag"


@pytest.mark.parametrize("msg", [m for m in EXAMPLES if isinstance(m, ClientRequest | ClientReply)])
def test_the_client_message_fast_path_agrees_on_every_edge_value(msg: Any) -> None:
    """A leader decodes requests (and a client replies) on a fast path; it must accept
    exactly what the field-by-field schema accepts, and build the same message."""
    tag, *fields = msgpack.unpackb(encode(msg, CID), raw=False)[2:]
    for pos in range(len(fields)):
        for edge in _EDGES_LIST:
            _fast_and_checked_agree(tag, [*fields[:pos], edge, *fields[pos + 1 :]])
    for cut in range(len(fields)):
        _fast_and_checked_agree(tag, fields[:cut])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(client_requests, client_replies()), st.data())
def test_the_client_message_fast_path_agrees_with_the_schema_checks(
    msg: Any, data: st.DataObject
) -> None:
    tag, *fields = msgpack.unpackb(encode(msg, CID), raw=False)[2:]
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(fields) - 1))
        fields[pos] = data.draw(st.sampled_from(_EDGES_LIST) | values)
    _fast_and_checked_agree(tag, fields)


def test_the_command_fast_path_agrees_on_every_edge_value() -> None:
    """Every node decodes every command it applies on a fast path: it must take exactly
    what the field-by-field checks take (and a bound it loosens would show here)."""
    fields: list[Any] = [1, b"cid", 7, "put", ["k", b"v"]]
    edges = [*_EDGES_LIST, 2, b"x" * 256, "x" * 256, [1] * 4096]
    cases = [fields[:cut] for cut in range(len(fields))]
    cases += [[*fields[:p], v, *fields[p + 1 :]] for p in range(len(fields)) for v in edges]
    for case in cases:
        try:
            checked: Any = codec._command_checked(case)
        except DecodeError:
            with pytest.raises(DecodeError):
                decode_command(msgpack.packb(case, use_bin_type=True))
            continue
        fast = decode_command(msgpack.packb(case, use_bin_type=True))
        assert fast == checked and [type(v) for v in fast] == [type(v) for v in checked]


class _Text(str):
    pass


class _Small(enum.IntEnum):
    ONE = 1


_flat_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=True),
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.binary(max_size=8),
)


@settings(max_examples=300)
@given(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.lists(
        _flat_values
        | st.sampled_from([bytearray(b"x"), _Small.ONE, _Text("t")])
        | st.lists(_flat_values, max_size=2),
        max_size=5,
    ),
)
def test_an_embedded_call_is_applied_on_the_leader_as_every_node_decodes_it(
    name: str, args: list[Any]
) -> None:
    """The leader skips decoding a command it encoded from flat arguments: what it
    applies must be what a follower decodes from the entry, value for value and type
    for type, or the replicas' state machines would part ways."""
    data, cmd = codec.encode_local_command(name, tuple(args))
    assert data == encode_command(b"", 0, name, tuple(args))
    decoded = decode_command(data)
    flat = all(type(a) in (type(None), bool, int, float, str, bytes) for a in args)
    assert (cmd is not None) == flat
    if cmd is not None:
        assert [type(v) for v in cmd[3]] == [type(v) for v in decoded[3]]
        assert msgpack.packb(cmd) == msgpack.packb(decoded)  # NaN != NaN, its bytes agree
        assert cmd[:3] == decoded[:3]


def test_what_followers_would_see_otherwise_is_left_for_the_leader_to_decode() -> None:
    """Followers refuse a command of more than MAX_ARGS arguments when they decode it,
    and look a name up as a plain str: the leader must see the same, so it decodes."""
    data, cmd = codec.encode_local_command("n", (1,) * codec.MAX_ARGS)
    assert cmd is not None and decode_command(data) == cmd
    data, cmd = codec.encode_local_command("n", (1,) * (codec.MAX_ARGS + 1))
    assert cmd is None
    with pytest.raises(DecodeError):
        decode_command(data)
    data, cmd = codec.encode_local_command(_Text("put"), ("k",))
    assert cmd is None and type(decode_command(data)[2]) is str
