"""msgpack encoding of every message, with validation at the boundary.

Wire format: one msgpack array ``[VERSION, cluster_id, tag, field, field, ...]``
with the fields in dataclass order (arrays, not maps: smaller and faster).
Entries travel as ``[term, index, type, data]`` arrays (an :class:`Entry` is a
tuple already, so encoding them costs nothing extra); a :class:`SnapshotMeta`
as ``[index, term, [voters, learners], size, crc32]``.

Everything that arrives from a socket is hostile until proven otherwise:
:func:`decode` checks the version, the cluster id, the tag, the field count,
every field's type and range, and entry/membership structure, and raises
:class:`DecodeError` -- and only :class:`DecodeError` -- for any input bytes.

Arrays inside client ``args``/``result`` come back as lists (msgpack has one
array type); the top-level ``args`` is a tuple again. Maps need str/bytes keys
(see :func:`decode`).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, NoReturn

import msgpack

from zraft.core.types import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from zraft.protocol import (
    CONSISTENCIES,
    ERROR_CODES,
    MAX_TIMEOUT_MS,
    REQUEST_KINDS,
    ClientReply,
    ClientRequest,
)

VERSION = 1
COMMAND_VERSION = 1

# Limits (TIGER_STYLE: a bound on everything that comes from outside).
DEFAULT_MAX_BYTES = 64 << 20  #: whole encoded message
MAX_ID_LEN = 128  #: node id characters
MAX_ADDRESS_LEN = 1024  #: member address characters
MAX_MEMBERS = 1024  #: voters + learners in one membership
MAX_ENTRIES = 1 << 16  #: entries in one AppendEntries
MAX_CTX_BYTES = 1024  #: ReadIndex context
MAX_NAME_LEN = 256  #: command/query name, cluster id
MAX_CLIENT_ID_BYTES = 256  #: exactly-once session id
MAX_ARGS = 4096  #: top-level command arguments
MAX_TEXT_LEN = 64 << 10  #: human-readable reply message
MAX_UINT = (1 << 63) - 1  #: ints stay in a signed 64-bit range for storage
MAX_BATCH = 4096  #: client requests or replies in one batch frame
BATCH_TAG = 32  #: a frame carrying many client requests or replies

Decoded = Message | ClientRequest | ClientReply


class DecodeError(Exception):
    """Inbound bytes are not a valid message. ``reason`` is a stable snake_case code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _fail(reason: str, detail: str = "") -> NoReturn:
    raise DecodeError(reason, detail)


# --------------------------------------------------------------------------- field checks
# Each check takes the raw value and the field name, returns the value to store.


def _uint(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_UINT:
        _fail("bad_field", f"{name} must be an int in [0, 2**63)")
    return v


def _bool(v: Any, name: str) -> bool:
    if type(v) is not bool:
        _fail("bad_field", f"{name} must be a bool")
    return v


def _node_id(v: Any, name: str) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_ID_LEN:
        _fail("bad_field", f"{name} must be a node id (1..{MAX_ID_LEN} chars)")
    return v


def _opt_node_id(v: Any, name: str) -> str:
    if type(v) is not str or len(v) > MAX_ID_LEN:
        _fail("bad_field", f"{name} must be a node id or empty")
    return v


def _bounded_str(limit: int) -> Callable[[Any, str], str]:
    def check(v: Any, name: str) -> str:
        if type(v) is not str or len(v) > limit:
            _fail("bad_field", f"{name} must be a str of at most {limit} chars")
        return v

    return check


def _bounded_bytes(limit: int) -> Callable[[Any, str], bytes]:
    def check(v: Any, name: str) -> bytes:
        if type(v) is not bytes or len(v) > limit:
            _fail("bad_field", f"{name} must be bytes of at most {limit}")
        return v

    return check


def _any_bytes(v: Any, name: str) -> bytes:
    if type(v) is not bytes:
        _fail("bad_field", f"{name} must be bytes")
    return v


def _one_of(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def check(v: Any, name: str) -> str:
        if type(v) is not str or v not in choices:
            _fail("bad_field", f"{name} must be one of {', '.join(choices)}")
        return v

    return check


def _anything(v: Any, name: str) -> Any:
    return v


def _args(v: Any, name: str) -> tuple[Any, ...]:
    if type(v) is not list or len(v) > MAX_ARGS:
        _fail("bad_field", f"{name} must be an array of at most {MAX_ARGS} values")
    return tuple(v)


def _membership(v: Any, name: str) -> Membership:
    if type(v) is not list or len(v) not in (2, 3):
        _fail("bad_membership", f"{name} must be [voters, learners] or [.., promote]")
    voters, learners = v[0], v[1]
    promote = v[2] if len(v) == 3 else []
    for part in (voters, learners):
        if type(part) is not dict:
            _fail("bad_membership", "voters and learners are maps")
        for node, address in part.items():
            _node_id(node, "member id")
            _bounded_str(MAX_ADDRESS_LEN)(address, "member address")
    if len(voters) + len(learners) > MAX_MEMBERS or voters.keys() & learners.keys():
        _fail("bad_membership", "too many members or a node both voter and learner")
    if type(promote) is not list or not all(type(p) is str and p in learners for p in promote):
        _fail("bad_membership", "promote lists learners")
    return Membership(voters=voters, learners=learners, promote=tuple(sorted(set(promote))))


def _snapshot_meta(v: Any, name: str) -> SnapshotMeta:
    if type(v) is not list or len(v) != 5:
        _fail("bad_snapshot_meta", f"{name} must be [index, term, membership, size, crc32]")
    index, term, membership, size, crc32 = v
    _uint(index, "meta.index")
    _uint(term, "meta.term")
    _uint(size, "meta.size")
    if type(crc32) is not int or not 0 <= crc32 <= 0xFFFFFFFF:
        _fail("bad_snapshot_meta", "meta.crc32 must be a 32-bit unsigned int")
    return SnapshotMeta(index, term, _membership(membership, "meta.membership"), size, crc32)


_ENTRY_TYPES: tuple[EntryType, ...] = tuple(EntryType)
assert all(t.value == i for i, t in enumerate(_ENTRY_TYPES)), "EntryType values are 0..n-1"


def _entries(raw: Any, prev_index: int, prev_term: int, term: int) -> tuple[Entry, ...]:
    """Rebuild Entry tuples: contiguous after prev_index, terms non-decreasing, <= term.

    The hot path of replication: one pass, type checks by identity, no copies of data.
    """
    if type(raw) is not list or len(raw) > MAX_ENTRIES:
        _fail("bad_entries", f"entries must be an array of at most {MAX_ENTRIES}")
    out = []
    expect = prev_index + 1
    last_term = prev_term
    n_types = len(_ENTRY_TYPES)
    config = EntryType.CONFIG  # a local: an enum member lookup costs ~0.2 us in 3.11
    for e in raw:
        if type(e) is not list or len(e) != 4:
            _fail("bad_entries", "an entry is [term, index, type, data]")
        t, i, ty, d = e
        if type(t) is not int or type(i) is not int or type(ty) is not int or type(d) is not bytes:
            _fail("bad_entries", "entry field types")
        if i != expect or not last_term <= t <= term or not 0 <= ty < n_types:
            _fail("bad_entries", f"entry {i}: not contiguous, bad term or bad type")
        et = _ENTRY_TYPES[ty]
        if et is config:
            _config_data(d)
        out.append(Entry(t, i, et, d))
        expect += 1
        last_term = t
    return tuple(out)


def _config_data(data: bytes) -> None:
    """A CONFIG entry must hold a membership within the same limits as the wire's."""
    try:
        m = Membership.decode(data)
    except (ValueError, TypeError, AssertionError, RecursionError) as exc:
        _fail("bad_entries", f"CONFIG entry is not a membership: {type(exc).__name__}")
    members = {**m.voters, **m.learners}
    if len(members) > MAX_MEMBERS or any(
        len(i) > MAX_ID_LEN or len(a) > MAX_ADDRESS_LEN for i, a in members.items()
    ):
        _fail("bad_entries", "CONFIG membership exceeds member/id/address limits")


# --------------------------------------------------------------------------- schemas

Check = Callable[[Any, str], Any]

_CTX = _bounded_bytes(MAX_CTX_BYTES)
_CLIENT_ID = _bounded_bytes(MAX_CLIENT_ID_BYTES)
_SCHEMAS: dict[type, tuple[tuple[str, Check], ...]] = {
    AppendEntries: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("prev_index", _uint),
        ("prev_term", _uint),
        ("entries", _anything),  # checked against prev_index/prev_term/term afterwards
        ("commit", _uint),
    ),
    AppendResponse: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("index", _uint),
        ("reject", _bool),
        ("hint_term", _uint),
        ("hint_index", _uint),
    ),
    RequestVote: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("last_index", _uint),
        ("last_term", _uint),
        ("pre_vote", _bool),
        ("transfer", _bool),
    ),
    VoteResponse: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("granted", _bool),
        ("pre_vote", _bool),
    ),
    Heartbeat: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("commit", _uint),
        ("ctx", _CTX),
    ),
    HeartbeatResponse: (("term", _uint), ("frm", _node_id), ("to", _node_id), ("ctx", _CTX)),
    InstallSnapshot: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("meta", _snapshot_meta),
        ("offset", _uint),
        ("data", _any_bytes),
        ("done", _bool),
    ),
    SnapshotResponse: (
        ("term", _uint),
        ("frm", _node_id),
        ("to", _node_id),
        ("index", _uint),
        ("offset", _uint),
        ("done", _bool),
        ("reject", _bool),
    ),
    TimeoutNow: (("term", _uint), ("frm", _node_id), ("to", _node_id)),
    ClientRequest: (
        ("req_id", _uint),
        ("kind", _one_of(REQUEST_KINDS)),
        ("name", _bounded_str(MAX_NAME_LEN)),
        ("args", _args),
        ("client_id", _CLIENT_ID),
        ("seq", _uint),
        ("consistency", _one_of(CONSISTENCIES)),
        ("timeout_ms", _uint),
    ),
    ClientReply: (
        ("req_id", _uint),
        ("ok", _bool),
        ("result", _anything),
        ("error", _bounded_str(MAX_NAME_LEN)),
        ("message", _bounded_str(MAX_TEXT_LEN)),
        ("leader", _opt_node_id),
        ("leader_address", _bounded_str(MAX_ADDRESS_LEN)),
    ),
}

#: Wire tags: Raft messages 1..9 in MESSAGE_TYPES order, client messages from 16. Never reuse one.
_TAGS: dict[type, int] = {cls: i + 1 for i, cls in enumerate(MESSAGE_TYPES)}
_TAGS[ClientRequest] = 16
_TAGS[ClientReply] = 17
_BY_TAG: dict[int, type] = {tag: cls for cls, tag in _TAGS.items()}
_RAFT_TYPES = frozenset(MESSAGE_TYPES)
assert set(_SCHEMAS) == set(_TAGS), "every tagged type has a schema"
for _cls in (ClientRequest, ClientReply):
    assert _cls._fields == tuple(name for name, _ in _SCHEMAS[_cls]), "tuple order is wire order"
_GETTERS: dict[type, attrgetter[Any]] = {
    cls: attrgetter(*(name for name, _ in schema)) for cls, schema in _SCHEMAS.items()
}


# --------------------------------------------------------------------------- encode


def _meta_to_wire(meta: SnapshotMeta) -> list[Any]:
    m = meta.membership
    parts: list[Any] = (
        [m.voters, m.learners, list(m.promote)] if m.promote else [m.voters, m.learners]
    )
    return [meta.index, meta.term, parts, meta.size, meta.crc32]


def encode(msg: Decoded, cluster_id: str) -> bytes:
    """Encode a Raft or client message. Trusts its input (our own objects).

    Raises TypeError/ValueError/OverflowError only if a client ``args`` or
    reply ``result`` holds something msgpack cannot carry.
    """
    cls = type(msg)
    fields = _GETTERS[cls](msg)
    if cls is InstallSnapshot:
        assert isinstance(msg, InstallSnapshot)
        fields = (*fields[:3], _meta_to_wire(msg.meta), *fields[4:])
    out: bytes = msgpack.packb([VERSION, cluster_id, _TAGS[cls], *fields], use_bin_type=True)
    return out


def pack_entries(entries: tuple[Entry, ...]) -> bytes:
    """The entries array of an AppendEntries, packed once for every follower it goes to."""
    out: bytes = msgpack.packb(entries, use_bin_type=True)
    return out


def encode_append(msg: AppendEntries, cluster_id: str, packed_entries: bytes) -> bytes:
    """Exactly ``encode(msg)``, with ``msg.entries`` already packed by :func:`pack_entries`.

    A leader sends the same entries to each follower; packing them once saves a copy
    of every payload per extra follower.
    """
    fields = (VERSION, cluster_id, _TAGS[AppendEntries], msg.term, msg.frm, msg.to)
    head: bytes = msgpack.packb([*fields, msg.prev_index, msg.prev_term], use_bin_type=True)
    assert head[0] == 0x98, "a fixarray of the 8 fields before entries"
    tail: bytes = msgpack.packb(msg.commit)
    return b"\x9a" + head[1:] + packed_entries + tail  # fixarray of all 10 fields


def encode_batch(msgs: list[ClientRequest] | list[ClientReply], cluster_id: str) -> bytes:
    """Many client requests (or replies) in one frame: per-message costs paid once.

    A batch of one is encoded as the plain message, so old peers read it too.
    """
    assert 0 < len(msgs) <= MAX_BATCH, "a batch holds 1..MAX_BATCH messages"
    if len(msgs) == 1:
        return encode(msgs[0], cluster_id)
    tag = _TAGS[type(msgs[0])]
    assert type(msgs[-1]) is type(msgs[0]), "one kind of message per batch"
    bodies = [[tag, *m] for m in msgs]  # client messages are tuples in schema order
    out: bytes = msgpack.packb([VERSION, cluster_id, BATCH_TAG, bodies], use_bin_type=True)
    return out


# --------------------------------------------------------------------------- decode


def _reject_ext(code: int, data: bytes) -> NoReturn:
    _fail("bad_msgpack", f"extension type {code} not allowed")


#: frames above this are decoded with the cyclic GC off: a crafted frame of millions of
#: tiny arrays made every allocation-triggered collection walk all of them (quadratic;
#: 16 MiB took 7.8 s, about 1.2 s without collections); what decodes is acyclic
GC_OFF_ABOVE_BYTES = 1 << 16


def _unpack(data: bytes | memoryview, max_bytes: int, strict_map_key: bool = True) -> Any:
    if len(data) > max_bytes:
        _fail("too_large", f"{len(data)} bytes > {max_bytes}")
    collecting = len(data) > GC_OFF_ABOVE_BYTES and gc.isenabled()
    if collecting:
        gc.disable()
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=strict_map_key, ext_hook=_reject_ext
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several types; all mean "not msgpack for us"
        _fail("bad_msgpack", type(exc).__name__)
    finally:
        if collecting:
            gc.enable()


def decode(
    data: bytes | memoryview,
    cluster_id: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict_map_key: bool = True,
) -> Decoded:
    """Decode and validate one message. Raises DecodeError (and nothing else) on bad input.

    Map keys must be str or bytes: int keys allow hash-collision floods, so a
    node never accepts them. A client, which trusts the nodes it asks, may pass
    ``strict_map_key=False`` to accept int-keyed maps in a reply's ``result``.
    """
    raw = _envelope(data, cluster_id, max_bytes, strict_map_key)
    if raw[2] == BATCH_TAG:
        _fail("bad_envelope", "a batch frame where one message was expected")
    return _decode_body(raw[2], raw[3:])


def decode_many(
    data: bytes | memoryview,
    cluster_id: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict_map_key: bool = True,
) -> list[Decoded]:
    """Decode a frame holding one message or a batch of client requests/replies.

    A batch is all or nothing: one bad item rejects the frame (DecodeError).
    """
    raw = _envelope(data, cluster_id, max_bytes, strict_map_key)
    if raw[2] != BATCH_TAG:
        return [_decode_body(raw[2], raw[3:])]
    if len(raw) != 4 or type(raw[3]) is not list or not 0 < len(raw[3]) <= MAX_BATCH:
        _fail("bad_envelope", f"a batch is [version, cluster_id, {BATCH_TAG}, [1..MAX_BATCH]]")
    out: list[Decoded] = []
    for body in raw[3]:
        if type(body) is not list or not body or body[0] not in (16, 17):
            _fail("bad_envelope", "a batch carries client requests or replies only")
        out.append(_decode_body(body[0], body[1:]))
    return out


def _envelope(
    data: bytes | memoryview, cluster_id: str, max_bytes: int, strict_map_key: bool
) -> list[Any]:
    raw = _unpack(data, max_bytes, strict_map_key)
    if type(raw) is not list or len(raw) < 3:
        _fail("bad_envelope", "not [version, cluster_id, tag, ...]")
    if type(raw[0]) is not int or raw[0] != VERSION:
        _fail("bad_version", _brief(raw[0]))
    if type(raw[1]) is not str or raw[1] != cluster_id:
        _fail("wrong_cluster", _brief(raw[1]))
    return raw


def _decode_body(tag: Any, fields: list[Any]) -> Decoded:
    if type(tag) is int:  # not 16.0: the schema path refuses any tag but an int
        if tag == 16:  # the per-write messages: a fast path for the valid ones
            req = _valid_request(fields)
            if req is not None:
                return req
        elif tag == 17:
            reply = _valid_reply(fields)
            if reply is not None:
                return reply
    return _decode_checked(tag, fields)


def _decode_checked(tag: Any, fields: list[Any]) -> Decoded:
    """Any message, field by field against its schema: the path that names what is wrong."""
    cls = _BY_TAG.get(tag) if type(tag) is int else None
    if cls is None:
        _fail("unknown_tag", _brief(tag))
    schema = _SCHEMAS[cls]
    if len(fields) != len(schema):
        _fail("bad_field_count", f"{cls.__name__} has {len(schema)} fields, got {len(fields)}")
    values = [check(v, name) for (name, check), v in zip(schema, fields, strict=True)]
    if cls in _RAFT_TYPES:
        if values[1] == values[2]:
            _fail("bad_field", "frm == to")
        if cls is AppendEntries:
            if values[4] > values[0]:
                _fail("bad_field", "prev_term > term")
            values[5] = _entries(values[5], values[3], values[4], values[0])
    return _construct(cls, values)


_KINDS = frozenset(REQUEST_KINDS)
_CONSISTENCIES = frozenset(CONSISTENCIES)
_ERRORS = frozenset(ERROR_CODES)


def _valid_request(f: list[Any]) -> ClientRequest | None:
    """A ClientRequest if ``f`` passes every check of its schema, else None.

    One expression instead of eight check calls, and no ``__new__`` (whose asserts
    repeat these checks): a leader decodes one per write. None sends the fields
    down the generic path, which says what is wrong.
    """
    if len(f) != 8:
        return None
    req_id, kind, name, args, client_id, seq, consistency, timeout_ms = f
    if (
        type(req_id) is int
        and 0 <= req_id <= MAX_UINT
        and type(kind) is str
        and kind in _KINDS
        and type(name) is str
        and len(name) <= MAX_NAME_LEN
        and type(args) is list
        and len(args) <= MAX_ARGS
        and type(client_id) is bytes
        and len(client_id) <= MAX_CLIENT_ID_BYTES
        and type(seq) is int
        and 0 <= seq <= MAX_UINT
        and type(consistency) is str
        and consistency in _CONSISTENCIES
        and type(timeout_ms) is int
        and 0 < timeout_ms <= MAX_TIMEOUT_MS
    ):
        values = (req_id, kind, name, tuple(args), client_id, seq, consistency, timeout_ms)
        return tuple.__new__(ClientRequest, values)
    return None


def _valid_reply(f: list[Any]) -> ClientReply | None:
    """A ClientReply if ``f`` passes every check of its schema, else None (as above)."""
    if len(f) != 7:
        return None
    req_id, ok, result, error, message, leader, address = f
    if (
        type(req_id) is int
        and 0 <= req_id <= MAX_UINT
        and type(ok) is bool
        and type(error) is str
        and (error == "" if ok else error in _ERRORS)
        and type(message) is str
        and len(message) <= MAX_TEXT_LEN
        and type(leader) is str
        and len(leader) <= MAX_ID_LEN
        and type(address) is str
        and len(address) <= MAX_ADDRESS_LEN
    ):
        return tuple.__new__(ClientReply, (req_id, ok, result, error, message, leader, address))
    return None


def _brief(v: Any) -> str:
    """A short, cheap description of a hostile value for an error detail."""
    if type(v) in (int, str, bytes):
        return repr(v)[:48]
    return type(v).__name__


def _construct(cls: type, values: list[Any]) -> Decoded:
    """Cross-field checks, then build the object."""
    if cls is ClientRequest and not 0 < values[7] <= MAX_TIMEOUT_MS:
        _fail("bad_field", "timeout_ms out of range")
    if cls is ClientReply:
        ok, error = values[1], values[3]
        if (ok and error) or (not ok and error not in ERROR_CODES):
            _fail("bad_field", "error must be empty when ok, else one of ERROR_CODES")
    try:
        obj: Decoded = cls(*values)
    except (
        AssertionError,
        TypeError,
        ValueError,
    ) as exc:  # belt and braces: asserts in __post_init__
        _fail("bad_field", f"{cls.__name__}: {exc}")
    return obj


# --------------------------------------------------------------------------- command payloads


_FLAT = frozenset({str, bytes, int, float, bool, type(None)})


def _all_flat(args: tuple[Any, ...]) -> bool:
    """No containers (nor subclasses) among ``args``: msgpack gives each back unchanged."""
    for a in args:  # noqa: SIM110 (all() over a generator took twice as long per command)
        if type(a) not in _FLAT:
            return False
    return True


def check_map_keys(args: tuple[Any, ...]) -> None:
    """TypeError if a dict anywhere in ``args`` has a key that is not str or bytes.

    Nodes decode strictly (int keys allow hash-collision floods), so such arguments
    would be dropped with their whole frame, or committed and skipped by every node:
    the caller learns it here, at once, instead of from a timeout.
    """
    if _all_flat(args):
        return  # the common case: no containers at all
    stack: list[Any] = list(args)
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            bad = next((k for k in v if type(k) is not str and type(k) is not bytes), None)
            if bad is not None:
                raise TypeError(f"map keys must be str or bytes, not {type(bad).__name__}")
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)


def encode_local_command(
    name: str, args: tuple[Any, ...]
) -> tuple[bytes, tuple[bytes, int, str, tuple[Any, ...]] | None]:
    """:func:`encode_command` of an embedded call (no session), and, when the name is a
    plain str and every argument a flat value that msgpack gives back unchanged, the
    command as :func:`decode_command` would return it: the leader applies that instead
    of decoding the entry it has just encoded. None when a node must decode the bytes
    to see them (followers always do)."""
    data = encode_command(b"", 0, name, args)
    # more than MAX_ARGS: no node applies it; a str subclass decodes as str
    if type(name) is not str or len(args) > MAX_ARGS or not _all_flat(args):
        return data, None
    return data, (b"", 0, name, args)


def encode_command(client_id: bytes, seq: int, name: str, args: tuple[Any, ...]) -> bytes:
    """The bytes of a NORMAL entry: who asked (exactly-once session), what, with which args.

    Raises ValueError (bad name/seq) or TypeError (args msgpack cannot carry, or a map
    key no node accepts).
    """
    if not name or len(name) > MAX_NAME_LEN or not 0 <= seq <= MAX_UINT:
        raise ValueError("a command has a name of 1..MAX_NAME_LEN chars and a seq in [0, 2**63)")
    check_map_keys(args)
    out: bytes = msgpack.packb(
        [COMMAND_VERSION, client_id, seq, name, list(args)], use_bin_type=True
    )
    return out


def decode_command(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes, int, str, tuple[Any, ...]]:
    """Inverse of :func:`encode_command`; DecodeError on anything malformed.

    Every node decodes every entry it applies: a valid command takes one expression,
    anything else goes to :func:`_command_checked`, which names the fault.
    """
    raw = _unpack(data, max_bytes)
    if type(raw) is list and len(raw) == 5:
        version, client_id, seq, name, args = raw
        if (
            type(version) is int
            and version == COMMAND_VERSION
            and type(client_id) is bytes
            and len(client_id) <= MAX_CLIENT_ID_BYTES
            and type(seq) is int
            and 0 <= seq <= MAX_UINT
            and type(name) is str
            and 0 < len(name) <= MAX_NAME_LEN
            and type(args) is list
            and len(args) <= MAX_ARGS
        ):
            return client_id, seq, name, tuple(args)
    return _command_checked(raw)


def _command_checked(raw: Any) -> tuple[bytes, int, str, tuple[Any, ...]]:
    if type(raw) is not list or len(raw) != 5:
        _fail("bad_command", "not [version, client_id, seq, name, args]")
    version, client_id, seq, name, args = raw
    if type(version) is not int or version != COMMAND_VERSION:
        _fail("bad_version", f"command version {version!r}"[:48])
    _CLIENT_ID(client_id, "client_id")
    _uint(seq, "seq")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_LEN:
        _fail("bad_field", f"name must be 1..{MAX_NAME_LEN} chars")
    return client_id, seq, name, _args(args, "args")
