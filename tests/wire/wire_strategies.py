"""Hypothesis strategies for every message the wire carries (valid ones)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from zraft.codec import MAX_ID_LEN
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
from zraft.protocol import (
    CONSISTENCIES,
    ERROR_CODES,
    MAX_TIMEOUT_MS,
    REQUEST_KINDS,
    ClientReply,
    ClientRequest,
)

U64 = (1 << 63) - 1
uints = st.integers(0, U64)
small = st.integers(0, 1000)
text = st.text(st.characters(codec="utf-8"), max_size=20)
node_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_ID_LEN)
addresses = st.from_regex(r"tcp://127\.0\.0\.1:[0-9]{1,5}", fullmatch=True)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=20)
)
#: What a client may put in args/result: msgpack values, arrays as lists, str keys.
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    ids = draw(st.lists(node_ids, unique=True, max_size=6))
    split = draw(st.integers(0, len(ids)))
    voters = {i: draw(addresses) for i in ids[:split]}
    learners = {i: draw(addresses) for i in ids[split:]}
    promote = draw(st.lists(st.sampled_from(ids[split:]), unique=True)) if learners else []
    return Membership(voters=voters, learners=learners, promote=tuple(sorted(promote)))


snapshot_metas = st.builds(
    SnapshotMeta,
    index=uints,
    term=uints,
    membership=memberships(),
    size=uints,
    crc32=st.integers(0, 0xFFFFFFFF),
)


@st.composite
def entry_data(draw: st.DrawFn, etype: EntryType) -> bytes:
    if etype is EntryType.CONFIG:
        return draw(memberships()).encode()
    if etype is EntryType.NOOP:
        return b""
    return draw(st.binary(max_size=64))


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    frm, to = draw(st.lists(node_ids, min_size=2, max_size=2, unique=True))
    prev_index = draw(small)
    prev_term = draw(small)
    term = prev_term + draw(st.integers(0, 5))
    entries = []
    t = prev_term
    for k in range(draw(st.integers(0, 8))):
        t = draw(st.integers(t, term))
        etype = draw(st.sampled_from(EntryType))
        entries.append(Entry(t, prev_index + 1 + k, etype, draw(entry_data(etype))))
    return AppendEntries(term, frm, to, prev_index, prev_term, tuple(entries), draw(small))


@st.composite
def raft_simple(draw: st.DrawFn) -> Any:
    frm, to = draw(st.lists(node_ids, min_size=2, max_size=2, unique=True))
    term = draw(uints)
    b = st.booleans()
    ctx = st.binary(max_size=32)
    return draw(
        st.one_of(
            st.builds(
                AppendResponse, st.just(term), st.just(frm), st.just(to), uints, b, uints, uints
            ),
            st.builds(RequestVote, st.just(term), st.just(frm), st.just(to), uints, uints, b, b),
            st.builds(VoteResponse, st.just(term), st.just(frm), st.just(to), b, b),
            st.builds(Heartbeat, st.just(term), st.just(frm), st.just(to), uints, ctx),
            st.builds(HeartbeatResponse, st.just(term), st.just(frm), st.just(to), ctx),
            st.builds(
                InstallSnapshot,
                st.just(term),
                st.just(frm),
                st.just(to),
                snapshot_metas,
                uints,
                st.binary(max_size=64),
                b,
            ),
            st.builds(
                SnapshotResponse, st.just(term), st.just(frm), st.just(to), uints, uints, b, b
            ),
            st.builds(TimeoutNow, st.just(term), st.just(frm), st.just(to)),
        )
    )


client_requests = st.builds(
    ClientRequest,
    req_id=uints,
    kind=st.sampled_from(REQUEST_KINDS),
    name=text,
    args=st.lists(values, max_size=4).map(tuple),
    client_id=st.binary(max_size=16),
    seq=uints,
    consistency=st.sampled_from(CONSISTENCIES),
    timeout_ms=st.integers(1, MAX_TIMEOUT_MS),
)


@st.composite
def client_replies(draw: st.DrawFn) -> ClientReply:
    ok = draw(st.booleans())
    return ClientReply(
        req_id=draw(uints),
        ok=ok,
        result=draw(values),
        error="" if ok else draw(st.sampled_from(ERROR_CODES)),
        message=draw(text),
        leader=draw(st.just("") | node_ids),
        leader_address=draw(st.just("") | addresses),
    )


messages = st.one_of(append_entries(), raft_simple(), client_requests, client_replies())
