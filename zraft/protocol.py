"""The client protocol: what a client asks a node and what the node answers.

Plain frozen data, like the Raft messages in :mod:`zraft.core.types`, so the
codec validates and ships both the same way. Invariants are asserted at
construction: a malformed reply is a bug at the site that built it, not a
mystery the client has to debug later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """One request from a client. ``req_id`` is echoed in the reply so a client can match it.

    ``client_id``/``seq`` form an exactly-once session for ``apply``: a node
    that already applied (client_id, seq) answers with the recorded result
    instead of applying again. ``seq == 0`` means no session.
    """

    req_id: int
    kind: str
    name: str = ""
    args: tuple[Any, ...] = ()
    client_id: bytes = b""
    seq: int = 0
    consistency: str = "linearizable"
    timeout_ms: int = 5000

    def __post_init__(self) -> None:
        assert self.req_id >= 0, "req_id is non-negative"
        assert self.kind in REQUEST_KINDS, f"unknown request kind {self.kind!r}"
        assert isinstance(self.args, tuple), "args is a tuple"
        assert isinstance(self.client_id, bytes), "client_id is bytes"
        assert self.seq >= 0, "seq is non-negative"
        assert self.consistency in CONSISTENCIES, f"unknown consistency {self.consistency!r}"
        assert 0 < self.timeout_ms <= MAX_TIMEOUT_MS, "timeout_ms within (0, MAX_TIMEOUT_MS]"


@dataclass(frozen=True, slots=True)
class ClientReply:
    """The answer to one :class:`ClientRequest`.

    ``ok`` with a ``result``, or not ok with an ``error`` from
    :data:`ERROR_CODES`; ``leader``/``leader_address`` hint where to retry.
    """

    req_id: int
    ok: bool
    result: Any = None
    error: str = ""
    message: str = ""
    leader: str = ""
    leader_address: str = ""

    def __post_init__(self) -> None:
        assert self.req_id >= 0, "req_id is non-negative"
        if self.ok:
            assert self.error == "", "a successful reply carries no error code"
        else:
            assert self.error in ERROR_CODES, f"unknown error code {self.error!r}"
