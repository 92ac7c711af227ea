"""Client sessions: remembered results that make a retried command take effect once.

Every node applies the same entries in the same order, so every node builds the same table
— but only if every node also trims it with the same limits. A node's configured limits
are therefore only a proposal: each new leader writes its limits into its term's no-op
entry (:meth:`SessionLimits.encode`), and every node adopts them when it applies that
entry. A snapshot carries the limits in force, so a node restored from one agrees too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from zraft.codec import DecodeError

#: Upper bounds on the limits themselves (Config.validate and decode both enforce them).
MAX_SESSION_WINDOW: Final = 1 << 16
MAX_SESSIONS: Final = 1 << 20

#: (ok, result, error, message) of one applied command, as the client saw it
Result = tuple[bool, Any, str, str]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How much the session table remembers; the same on every node at a given index."""

    window: int = 256  #: results kept per client (its newest sequence numbers)
    max_sessions: int = 10_000  #: clients kept; the least recently active goes first

    def __post_init__(self) -> None:
        assert 0 < self.window <= MAX_SESSION_WINDOW, self.window
        assert 0 < self.max_sessions <= MAX_SESSIONS, self.max_sessions

    def encode(self) -> bytes:
        """The payload of a leader's no-op entry."""
        packed: bytes = msgpack.packb(
            {"session_window": self.window, "max_sessions": self.max_sessions}
        )
        return packed

    @classmethod
    def decode(cls, data: bytes) -> SessionLimits:
        """Inverse of :meth:`encode`; DecodeError on anything else."""
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several types for garbage
            raise DecodeError("bad_limits", type(exc).__name__) from exc
        if type(raw) is not dict:
            raise DecodeError("bad_limits", "not a map")
        window, count = raw.get("session_window"), raw.get("max_sessions")
        if type(window) is not int or not 0 < window <= MAX_SESSION_WINDOW:
            raise DecodeError("bad_limits", f"session_window {window!r}"[:64])
        if type(count) is not int or not 0 < count <= MAX_SESSIONS:
            raise DecodeError("bad_limits", f"max_sessions {count!r}"[:64])
        return cls(window, count)


class Stale:
    """The sequence number fell out of the window: its outcome is forgotten."""


STALE: Final = Stale()


class Reused:
    """The sequence number's remembered result belongs to another command: two clients
    share an id, or a restarted one reused its numbers. Answering it would be a lie."""


REUSED: Final = Reused()

#: the reserved session that carries the limits in a snapshot (clients have non-empty ids)
_LIMITS_ID: Final = b""


class _Session:
    """One client's remembered results (seq order), their digests, and its floor."""

    __slots__ = ("client_id", "digests", "floor", "results")

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self.results: OrderedDict[int, Result] = OrderedDict()
        #: seq -> checksum of the command behind its result. Kept in memory only
        #: (snapshots keep their earlier layout): a restored table trusts every seq.
        self.digests: dict[int, int] = {}
        self.floor = 0  #: the highest seq trimmed away

    def trim(self, window: int) -> None:
        results = self.results
        while len(results) > window:
            seq, _ = results.popitem(last=False)
            self.digests.pop(seq, None)
            if seq > self.floor:
                self.floor = seq


class SessionTable:
    """Per-client remembered results, trimmed deterministically (LRU clients, lowest seqs).

    A client's results are kept in seq order, and its *floor* is the highest seq trimmed
    away: a seq at or below the floor that is not remembered is stale (its outcome is
    forgotten), anything above it was never applied. Seqs can commit out of order (an
    ``apply_many`` batch whose first command was refused as busy and retried), so the
    order of insertion says nothing about which seqs were trimmed.

    Every node runs :meth:`begin` and :meth:`record` for every client command it
    applies, so they are kept to a few dictionary operations each.
    """

    def __init__(self, limits: SessionLimits) -> None:
        self._limits = limits
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._last: _Session | None = None  #: the session :meth:`begin` last opened

    @property
    def limits(self) -> SessionLimits:
        return self._limits

    def __len__(self) -> int:
        return len(self._sessions)

    def begin(
        self, client_id: bytes, seq: int, digest: int | None = None
    ) -> Result | Stale | Reused | None:
        """Open (or touch) the client's session; its remembered result for ``seq``, if any.

        None means: run the command, then :meth:`record` its result. ``digest`` (a
        checksum of the command) tells a retry from another command under the same seq.
        """
        assert client_id and seq > 0
        sessions = self._sessions
        session = sessions.get(client_id)
        if session is None:
            session = sessions[client_id] = _Session(client_id)
            if len(sessions) > self._limits.max_sessions:
                sessions.popitem(last=False)
        else:
            sessions.move_to_end(client_id)
        self._last = session
        seen = session.results.get(seq)
        if seen is not None:
            known = session.digests.get(seq)
            if digest is not None and known is not None and known != digest:
                return REUSED
            return seen
        if seq <= session.floor:
            return STALE
        return None

    def record(self, client_id: bytes, seq: int, result: Result, digest: int | None = None) -> None:
        """Remember the result of a command :meth:`begin` let run."""
        session = self._last
        if session is None or session.client_id != client_id:
            session = self._sessions[client_id]
        if digest is not None:
            session.digests[seq] = digest
        results = session.results
        late = bool(results) and seq < next(reversed(results))
        results[seq] = result
        if late:  # rare: keep seq order, so trimming drops the lowest
            ordered = sorted(results.items())
            results.clear()
            results.update(ordered)
        if len(results) > self._limits.window:
            session.trim(self._limits.window)

    def set_limits(self, limits: SessionLimits) -> None:
        """Adopt the limits of an applied no-op entry, trimming at once if they shrank."""
        self._limits = limits
        self._last = None  # it may be about to go: record() without begin() must not find it
        while len(self._sessions) > limits.max_sessions:
            self._sessions.popitem(last=False)
        for session in self._sessions.values():
            session.trim(limits.window)

    def pack(self) -> bytes:
        """The table and its limits, for a snapshot.

        Laid out as the bare session list earlier versions wrote, with the limits as a
        reserved first session (client id ``b""``, which no client can use) and each
        client's floor as a reserved seq 0 (no command has it): a node of an earlier
        version can still restore it (during a rolling upgrade, say), though it does
        not know the floor and reads nothing below it as stale."""
        limits: list[tuple[bytes, list[tuple[int, Any]]]] = [
            (_LIMITS_ID, [(0, [True, [self._limits.window, self._limits.max_sessions], "", ""])])
        ]
        sessions = []
        for cid, session in self._sessions.items():  # the floor always, 0 too: see restore
            head = [(0, [True, session.floor, "", ""])]
            sessions.append((cid, head + list(session.results.items())))
        packed: bytes = msgpack.packb(limits + sessions, use_bin_type=True)
        return packed

    def restore(self, data: bytes) -> None:
        """Replace the table with a packed one (without the reserved limits session: from
        before limits were carried, so ours stay)."""
        try:
            sessions = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except TypeError:  # a result with array map keys, recorded before they were refused:
            sessions = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False)
        if sessions and sessions[0][0] == _LIMITS_ID:
            _seq, (_ok, window_and_count, _error, _message) = sessions[0][1][0]
            self._limits = SessionLimits(*window_and_count)
            sessions = sessions[1:]
        self._sessions, self._last = OrderedDict(), None
        for cid, results in sessions:
            session = _Session(cid)
            table = session.results
            floor = None
            for seq, (ok, result, error, message) in sorted(results, key=lambda r: r[0]):
                if seq == 0:
                    floor = int(result)
                else:
                    table[seq] = (bool(ok), result, str(error), str(message))
            if floor is None and len(table) >= self._limits.window:
                # a table from before floors travelled (ours always carry one, so a full
                # window that was never trimmed is not mistaken for one): read as then
                floor = next(iter(table)) - 1
            session.floor = floor or 0
            self._sessions[cid] = session

    def results(self, client_id: bytes) -> list[tuple[int, Result]]:
        """A client's remembered (seq, result) pairs, oldest first (for tests and tools)."""
        session = self._sessions.get(client_id)
        return list(session.results.items()) if session is not None else []
