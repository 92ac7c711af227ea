"""A client for other processes: finds the leader, retries safely, applies exactly once.

Each Client is a session: a random ``client_id`` plus a sequence number per
command. A retried command carries the same sequence number, and the replicated
session table answers it with the first result instead of applying it twice.
When no attempt got a definite answer, the caller gets :class:`UnknownOutcome`,
never a false failure.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import zmq

from zraft import codec
from zraft.errors import (
    ApplicationError,
    BusyError,
    CommandFailed,
    NotLeaderError,
    ReadTimeout,
    UnknownOutcome,
    ZraftError,
    error_from_code,
)
from zraft.protocol import ClientReply, ClientRequest

#: requests that change the cluster: one left without an answer may have taken effect
_CHANGES = frozenset({"apply", "add_member", "remove_member"})
_RETRY_ON = {"not_leader", "busy", "unknown_outcome", "stopped", "timeout", "storage_failed"}
#: Commands per apply_many round trip: at most the cluster's session_window (default 256),
#: so a retried batch is still answered from the session table, never applied twice.
MAX_APPLY_MANY = 256

Command = tuple[str, Sequence[Any]]  #: (command name, args) for apply_many

#: How long an attempt waits for a connection to a node before trying the next one
#: (the socket keeps connecting meanwhile): a node that is down or still starting must
#: not cost a whole attempt_timeout when another node could answer now.
CONNECT_WAIT_S = 0.2
ASK_CONNECT_S = 3.0  #: connect wait of a request to one named node (see _ask_one)
#: Retry pauses double from RETRY_MIN_S up to RETRY_MAX_S (BUSY_MAX_S for "busy":
#: backpressure deserves a longer step back); a hint naming another node is followed
#: at once. A pause as long as an election timeout kept clients idle after a new
#: leader was up.
RETRY_MIN_S, RETRY_MAX_S, BUSY_MAX_S = 0.01, 0.1, 0.5


class _NotConnected(Exception):
    """The request could not leave: no connection to the node yet (so nothing applied)."""


class Client:
    """Talk to a zraft cluster from another process. Thread-safe (one request at a time).

    ``endpoints`` are node addresses (``tcp://127.0.0.1:7001``); any subset will
    do, the leader is found from hints. With ``curve_keys`` (a directory laid out as
    ``zraft keygen`` writes it) the client encrypts and authenticates as
    ``clients/<client_name>``; endpoints must then be given as ``id=address``.

    ``client_id`` names the exactly-once session (random by default). A given id may
    be reused by a later process: its sequence numbers then start at the wall clock in
    microseconds, above any an earlier process with that id used, so the cluster never
    answers a new command with an old one's remembered result. Two live clients must
    never share an id.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Mapping[str, str] | str,
        *,
        cluster_id: str = "zraft",
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        curve_keys: str | None = None,
        client_name: str = "client",
        client_id: bytes | None = None,
        max_frame_bytes: int = 64 << 20,
    ) -> None:
        self._node_ids: dict[str, str] = {}  # address -> node id (needed to pick CURVE keys)
        self.endpoints = self._parse_endpoints(endpoints)
        if not self.endpoints:
            raise ValueError("Client needs at least one endpoint")
        self.cluster_id = cluster_id
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        if client_id is not None and (not isinstance(client_id, bytes) or not client_id):
            raise TypeError("client_id must be non-empty bytes")
        self.client_id = client_id or os.urandom(16)
        #: the nodes' max_frame_bytes: a larger request frame is refused here, as a node's
        #: ZeroMQ would drop it unanswered (and the caller wait out its timeout)
        self.max_frame_bytes = max_frame_bytes
        self._curve_dir = Path(curve_keys) if curve_keys else None
        self._keypair: tuple[bytes, bytes] | None = None
        if self._curve_dir is not None:
            from zraft.security import load_keypair

            self._keypair = load_keypair(self._curve_dir / "clients" / f"{client_name}.key_secret")
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        # a chosen id may have been used before: start above any seq it could have had
        self._seq = itertools.count(time.time_ns() // 1000 if client_id else 1)
        self._req_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current = 0
        self._hopped = False  # the last retry followed a hint without pausing
        self._unreachable: set[str] = set()  # endpoints not connected at their last attempt

    def _parse_endpoints(self, endpoints: Sequence[str] | Mapping[str, str] | str) -> list[str]:
        """Accept ``[addr, ...]``, ``{id: addr}``, or ``"addr,addr"`` / ``"n1=addr,n2=addr"``."""
        if isinstance(endpoints, Mapping):
            pairs = list(endpoints.items())
        else:
            items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
            pairs = [
                (i.partition("=")[0], i.partition("=")[2]) if "=" in i else ("", i)
                for i in (x.strip() for x in items)
                if i
            ]
        for node_id, addr in pairs:
            if node_id:
                self._node_ids[addr] = node_id
        return list(dict.fromkeys(addr for _, addr in pairs))

    # ------------------------------------------------------------------ public API

    def apply(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Replicate command ``name(*args)`` exactly once; return the handler's result."""
        with self._lock:
            seq = next(self._seq)
            return self._request("apply", name, args, timeout, seq=seq)

    def apply_many(
        self,
        commands: Sequence[Command],
        timeout: float | None = None,
        *,
        chunk: int = MAX_APPLY_MANY,
    ) -> list[Any]:
        """Replicate many commands, each exactly once; one round trip per ``chunk``.

        Each chunk travels as one frame and the leader appends it, in order, as one
        batch, so this costs far less per command than :meth:`apply` in a loop. A
        retry resends only the commands that lack a definite answer, so after a
        failover a retried command may land after ones that followed it. Returns one
        result per command; a command that definitely failed gets its error in its
        place: :class:`ApplicationError` when its handler raised, :class:`NoSuchCommand`
        or :class:`CommandFailed` when it was refused (the others still apply). Raises like
        :meth:`apply` when no definite answer comes (``timeout`` is per chunk).
        ``chunk`` must not exceed the cluster's ``session_window``.
        """
        if not 0 < chunk <= codec.MAX_BATCH:
            raise ValueError(f"chunk must be in 1..{codec.MAX_BATCH}")
        for _, args in commands:  # before any is sent: a node would drop the whole frame
            codec.check_map_keys(tuple(args))
        out: list[Any] = []
        with self._lock:
            for lo in range(0, len(commands), chunk):
                part = commands[lo : lo + chunk]
                seqs = [next(self._seq) for _ in part]
                out += self._request_many(part, seqs, timeout)
        return out

    def query(
        self, name: str, *args: Any, consistency: str = "linearizable", timeout: float | None = None
    ) -> Any:
        """Run query ``name(*args)`` with "linearizable", "lease" or "local" consistency."""
        with self._lock:
            return self._request("query", name, args, timeout, consistency=consistency)

    def status(self, endpoint: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """The status of one node (``endpoint``) or of whichever node answers first."""
        with self._lock:
            if endpoint is None:
                result: dict[str, Any] = self._request("status", "", (), timeout)
            else:
                req = ClientRequest(next(self._req_ids), "status")
                result = self._ask_one(endpoint, req, timeout)
            return result

    def members(self, timeout: float | None = None) -> dict[str, Any]:
        with self._lock:
            result: dict[str, Any] = self._request("members", "", (), timeout)
            return result

    def add_member(
        self, node_id: str, address: str, voter: bool = True, timeout: float | None = None
    ) -> int | None:
        """Add a learner (promoted once caught up if ``voter``); the log index of a
        membership that includes it."""
        with self._lock:
            out = self._request("add_member", "", (node_id, address, voter), timeout)
        return out if isinstance(out, int) else None

    def remove_member(self, node_id: str, timeout: float | None = None) -> None:
        with self._lock:
            self._request("remove_member", "", (node_id,), timeout)

    def transfer_leadership(self, to: str | None = None, timeout: float | None = None) -> str:
        with self._lock:
            result: str = self._request("transfer", "", (to or "",), timeout)
            return result

    def take_snapshot(self, endpoint: str | None = None, timeout: float = 60.0) -> int:
        """Snapshot one node (default: any node that answers); returns the snapshot index."""
        with self._lock:
            req = ClientRequest(next(self._req_ids), "snapshot", timeout_ms=int(timeout * 1000))
            if endpoint is None:
                result: int = self._request("snapshot", "", (), timeout, leader_only=False)
                return result
            return self._ask_one(endpoint, req, timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _socket(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self._sockets.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Our own random routing id: the one a ROUTER would assign counts up from a
            # known start, and another caller claiming it would take our replies over.
            sock.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
            if self._keypair is not None:
                self._apply_curve(sock, endpoint)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
        return sock

    def _apply_curve(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Encrypt to the node behind ``endpoint``: its public key is ``<id>.key``."""
        from zraft.security import client_curve_options, load_public_key

        assert self._curve_dir is not None and self._keypair is not None
        node_id = self._node_ids.get(endpoint)
        if node_id is None:
            raise ValueError(
                f"with CURVE, give endpoints as id=address so the server key is known ({endpoint})"
            )
        server_key = load_public_key(self._curve_dir / f"{node_id}.key")
        for option, value in client_curve_options(server_key, self._keypair).items():
            sock.setsockopt(option, value)

    def _reset(self, endpoint: str) -> None:
        """Drop a socket whose peer went silent, so late replies can't confuse the next request."""
        sock = self._sockets.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def _ask_one(self, endpoint: str, req: ClientRequest, timeout: float) -> Any:
        try:
            # a node that cannot take a connection in a few seconds is down: say so then,
            # not after the whole timeout (a snapshot may legitimately take that long)
            reply = self._exchange(endpoint, req, timeout, connect_wait=min(timeout, ASK_CONNECT_S))
        except _NotConnected:
            reply = None
        if reply is None:
            if endpoint in self._unreachable:
                raise ReadTimeout(f"could not connect to {endpoint} within {ASK_CONNECT_S:.0f}s")
            raise ReadTimeout(f"no answer from {endpoint} within {timeout:.1f}s")
        if not reply.ok:
            raise error_from_code(reply.error, reply.message, reply.leader, reply.leader_address)
        return reply.result

    def _send(self, endpoint: str, data: bytes, connect_deadline: float) -> zmq.Socket[bytes]:
        """Send one frame once connected; :class:`_NotConnected` if not by ``connect_deadline``
        (the socket is kept: it goes on connecting for the next attempt)."""
        if len(data) > self.max_frame_bytes:
            raise CommandFailed(
                f"request of {len(data)} bytes exceeds max_frame_bytes={self.max_frame_bytes}:"
                " no node would take it"
            )
        sock = self._socket(endpoint)
        while True:  # IMMEDIATE: a send only succeeds once connected
            try:
                sock.send(data, zmq.NOBLOCK)
                self._unreachable.discard(endpoint)
                return sock
            except zmq.Again:
                wait_ms = int((connect_deadline - time.monotonic()) * 1000)
                if wait_ms <= 0:
                    self._unreachable.add(endpoint)
                    raise _NotConnected(endpoint) from None
                sock.poll(min(wait_ms, 20), zmq.POLLOUT)

    def _connect_wait(self, endpoint: str) -> float:
        """Wait for a connection once; after that, try an unreachable node only in passing
        (its socket reconnects in the background) until it answers again."""
        return 0.0 if endpoint in self._unreachable else CONNECT_WAIT_S

    def _on_not_connected(self, endpoint: str, backoff: float, deadline: float) -> float:
        """Move on to the next node; pause when none is connected (the cluster is down or
        unreachable: no point spinning)."""
        self._current += 1
        if not self._unreachable.issuperset(self.endpoints):
            return backoff
        time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
        return min(backoff * 2, RETRY_MAX_S)

    def _exchange(
        self,
        endpoint: str,
        req: ClientRequest,
        timeout: float,
        connect_wait: float | None = None,
    ) -> ClientReply | None:
        """Send one request and wait for its reply; None on no answer (socket is then reset)."""
        deadline = time.monotonic() + timeout
        if connect_wait is None:
            connect_wait = self._connect_wait(endpoint)
        connect_by = min(deadline, time.monotonic() + connect_wait)
        sock = self._send(endpoint, codec.encode(req, self.cluster_id), connect_by)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset(endpoint)
                return None
            try:
                msgs = codec.decode_many(sock.recv(), self.cluster_id, strict_map_key=False)
            except codec.DecodeError:
                continue
            for msg in msgs:
                if isinstance(msg, ClientReply) and msg.req_id == req.req_id:
                    return msg

    def _request(
        self,
        kind: str,
        name: str,
        args: tuple[Any, ...],
        timeout: float | None,
        *,
        seq: int = 0,
        consistency: str = "linearizable",
        leader_only: bool = True,
    ) -> Any:
        codec.check_map_keys(args)  # a node would drop the frame: say so now, not at timeout
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        maybe_applied = False
        last_error: ZraftError | None = None
        backoff = RETRY_MIN_S
        silent = answered = False  # connected yet unanswered / any node answered
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            req = ClientRequest(
                next(self._req_ids),
                kind,
                name,
                args,
                self.client_id if seq else b"",
                seq,
                consistency,
                int(max(remaining, 0.001) * 1000),
            )
            try:
                reply = self._exchange(endpoint, req, min(self.attempt_timeout, remaining))
            except _NotConnected:
                last_error = ReadTimeout(f"could not connect to {endpoint}")
                backoff = self._on_not_connected(endpoint, backoff, deadline)
                continue
            if reply is None:
                silent = True
                maybe_applied = maybe_applied or kind in _CHANGES
                self._current += 1
                last_error = ReadTimeout(f"no answer from {endpoint}")
                continue
            if reply.ok:
                return reply.result
            answered = True
            err = error_from_code(reply.error, reply.message, reply.leader, reply.leader_address)
            if reply.error == "app_error":
                raise ApplicationError.from_message(reply.message)
            if reply.error not in _RETRY_ON:
                raise err
            if reply.error in ("unknown_outcome", "stopped"):
                maybe_applied = maybe_applied or kind in _CHANGES
            last_error = err
            backoff = self._retry_after(reply, backoff, deadline)
        hint = self.cluster_id if silent and not answered else ""
        _give_up(f"{kind} {name!r}", total, maybe_applied, last_error, hint)

    def _request_many(
        self, commands: Sequence[Command], seqs: list[int], timeout: float | None
    ) -> list[Any]:
        """Like :meth:`_request` for a batch: resend only what lacks a definite answer."""
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        results: dict[int, Any] = {}  # position in ``commands`` -> result
        maybe_applied = False
        last_error: ZraftError | None = None
        backoff = RETRY_MIN_S
        silent = answered = False  # connected yet unanswered / any node answered
        while len(results) < len(commands):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            timeout_ms = int(max(remaining, 0.001) * 1000)
            batch = {
                next(self._req_ids): i for i in range(len(commands)) if i not in results
            }  # req_id -> position
            reqs = [
                ClientRequest(rid, "apply", commands[i][0], tuple(commands[i][1]),
                              self.client_id, seqs[i], "linearizable", timeout_ms)
                for rid, i in batch.items()
            ]  # fmt: skip
            try:
                replies = self._exchange_many(endpoint, reqs, min(self.attempt_timeout, remaining))
            except _NotConnected:
                last_error = ReadTimeout(f"could not connect to {endpoint}")
                backoff = self._on_not_connected(endpoint, backoff, deadline)
                continue
            silent = silent or not replies
            answered = answered or bool(replies)
            if len(replies) < len(reqs):
                maybe_applied = True
                last_error = ReadTimeout(f"no answer from {endpoint} for some commands")
            retry: ClientReply | None = None
            for reply in replies:
                i = batch[reply.req_id]
                if reply.ok:
                    results[i] = reply.result
                elif reply.error == "app_error":
                    results[i] = ApplicationError.from_message(reply.message)
                elif reply.error not in _RETRY_ON:  # this one definitely failed; the rest
                    results[i] = error_from_code(  # of the batch may well have applied
                        reply.error, reply.message, reply.leader, reply.leader_address
                    )
                else:
                    maybe_applied = maybe_applied or reply.error in ("unknown_outcome", "stopped")
                    last_error = error_from_code(
                        reply.error, reply.message, reply.leader, reply.leader_address
                    )
                    retry = reply
            if retry is not None:
                backoff = self._retry_after(retry, backoff, deadline)
            elif len(replies) < len(reqs):
                self._current += 1
        if len(results) == len(commands):
            return [results[i] for i in range(len(commands))]
        what = f"apply_many: {len(commands) - len(results)} of {len(commands)} commands"
        hint = self.cluster_id if silent and not answered else ""
        _give_up(what, total, maybe_applied, last_error, hint)

    def _exchange_many(
        self, endpoint: str, reqs: list[ClientRequest], timeout: float
    ) -> list[ClientReply]:
        """Send ``reqs`` as one frame; the replies that come within ``timeout``."""
        deadline = time.monotonic() + timeout
        connect_by = min(deadline, time.monotonic() + self._connect_wait(endpoint))
        sock = self._send(endpoint, codec.encode_batch(reqs, self.cluster_id), connect_by)
        wanted = {r.req_id for r in reqs}
        got: list[ClientReply] = []
        while wanted:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                self._reset(endpoint)  # late replies must not meet the next attempt
                break
            try:
                msgs = codec.decode_many(sock.recv(), self.cluster_id, strict_map_key=False)
            except codec.DecodeError:
                continue
            for msg in msgs:
                if isinstance(msg, ClientReply) and msg.req_id in wanted:
                    wanted.discard(msg.req_id)
                    got.append(msg)
        return got

    def _retry_after(self, reply: ClientReply, backoff: float, deadline: float) -> float:
        """Pick the next endpoint from ``reply`` and pause unless it names a new leader to
        ask; the next pause (doubled, capped)."""
        asked = self.endpoints[self._current % len(self.endpoints)]
        self._follow_hint(reply)
        hint = reply.leader_address if reply.error == "not_leader" else ""
        if hint and hint != asked and not self._hopped:
            self._hopped = True  # at most one unpaused hop between pauses (stale hints)
            return backoff
        self._hopped = False
        pause = backoff * random.uniform(0.5, 1.0)  # jitter: clients must not retry in step
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        return min(backoff * 2, BUSY_MAX_S if reply.error == "busy" else RETRY_MAX_S)

    def _follow_hint(self, reply: ClientReply) -> None:
        if reply.error == "not_leader" and reply.leader_address:
            if reply.leader:
                self._node_ids[reply.leader_address] = reply.leader
            if reply.leader_address not in self.endpoints:
                self.endpoints.append(reply.leader_address)
            self._current = self.endpoints.index(reply.leader_address)
        else:
            self._current += 1


def _give_up(
    what: str, total: float, maybe_applied: bool, last: ZraftError | None, silent_to: str = ""
) -> NoReturn:
    """The error for a request that ran out of time: never a false failure. ``silent_to``
    is the cluster_id when connected nodes never answered: what a node does with a frame of
    another cluster (the last attempt may have failed only to reconnect)."""
    if silent_to:
        last = ReadTimeout(f"{last}; if the nodes are up, is cluster_id {silent_to!r} the nodes'?")
    if maybe_applied:
        raise UnknownOutcome(
            f"{what}: no definite answer within {total:.1f}s (last: {last}); "
            "it may have been applied"
        )
    if isinstance(last, NotLeaderError | BusyError):
        raise last
    raise ReadTimeout(f"{what}: no answer within {total:.1f}s (last: {last})")
