"""The client protocol: what a client asks a node and what the node answers.

Immutable tuples with named fields, validated and shipped by the codec like
the Raft messages in :mod:`zraft.core.types`. Invariants are asserted at
construction: a malformed reply is a bug at the site that built it, not a
mystery the client has to debug later.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: What a :class:`ClientRequest` may ask for.
REQUEST_KINDS: tuple[str, ...] = (
    "apply",
    "query",
    "status",
    "members",
    "add_member",
    "remove_member",
    "transfer",
    "snapshot",
)

#: How fresh a query must be: ReadIndex (default), leader lease, or whatever the node has.
CONSISTENCIES: tuple[str, ...] = ("linearizable", "lease", "local")

#: The ``error`` of a failed :class:`ClientReply`.
ERROR_CODES: tuple[str, ...] = (
    "not_leader",
    "unknown_outcome",
    "busy",
    "timeout",
    "app_error",
    "no_such_command",
    "bad_request",
    "change_in_progress",
    "stopped",
    "storage_failed",
)

#: A request's ``timeout_ms`` upper bound (one day): a limit on how long a node holds it.
MAX_TIMEOUT_MS = 86_400_000


class _ClientRequestFields(NamedTuple):
    req_id: int
    kind: str
    name: str = ""
    args: tuple[Any, ...] = ()
    client_id: bytes = b""
    seq: int = 0
    consistency: str = "linearizable"
    timeout_ms: int = 5000


class ClientRequest(_ClientRequestFields):
    """One request from a client. ``req_id`` is echoed in the reply so a client can match it.

    ``client_id``/``seq`` form an exactly-once session for ``apply``: a node
    that already applied (client_id, seq) answers with the recorded result
    instead of applying again. ``seq == 0`` means no session.

    A tuple (as :class:`~zraft.core.types.Entry`), not a frozen dataclass: every
    write builds one on each side of the wire, and a tuple builds in a third of
    the time. The codec validates what it decodes and builds it without ``__new__``.
    """

    __slots__ = ()

    def __new__(
        cls,
        req_id: int,
        kind: str,
        name: str = "",
        args: tuple[Any, ...] = (),
        client_id: bytes = b"",
        seq: int = 0,
        consistency: str = "linearizable",
        timeout_ms: int = 5000,
    ) -> ClientRequest:
        assert req_id >= 0, "req_id is non-negative"
        assert kind in REQUEST_KINDS, f"unknown request kind {kind!r}"
        assert isinstance(args, tuple), "args is a tuple"
        assert isinstance(client_id, bytes), "client_id is bytes"
        assert seq >= 0, "seq is non-negative"
        assert consistency in CONSISTENCIES, f"unknown consistency {consistency!r}"
        assert 0 < timeout_ms <= MAX_TIMEOUT_MS, "timeout_ms within (0, MAX_TIMEOUT_MS]"
        fields = (req_id, kind, name, args, client_id, seq, consistency, timeout_ms)
        return tuple.__new__(cls, fields)


class _ClientReplyFields(NamedTuple):
    req_id: int
    ok: bool
    result: Any = None
    error: str = ""
    message: str = ""
    leader: str = ""
    leader_address: str = ""


class ClientReply(_ClientReplyFields):
    """The answer to one :class:`ClientRequest`.

    ``ok`` with a ``result``, or not ok with an ``error`` from
    :data:`ERROR_CODES`; ``leader``/``leader_address`` hint where to retry.
    A tuple for the same reason as :class:`ClientRequest`.
    """

    __slots__ = ()

    def __new__(
        cls,
        req_id: int,
        ok: bool,
        result: Any = None,
        error: str = "",
        message: str = "",
        leader: str = "",
        leader_address: str = "",
    ) -> ClientReply:
        assert req_id >= 0, "req_id is non-negative"
        if ok:
            assert error == "", "a successful reply carries no error code"
        else:
            assert error in ERROR_CODES, f"unknown error code {error!r}"
        fields = (req_id, ok, result, error, message, leader, leader_address)
        return tuple.__new__(cls, fields)
