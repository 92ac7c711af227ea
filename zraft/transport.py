"""ZeroMQ transport: one ROUTER in, one DEALER per peer out, never blocking the reactor.

Why this shape: the reactor is single-threaded and must not stall on a slow or
dead peer. Outbound Raft messages go on per-peer DEALERs with ``IMMEDIATE``
and a small send HWM, sent with ``NOBLOCK``; ``zmq.Again`` is a lost message
(Raft resends). Every inbound byte -- peers and clients alike -- arrives on
one ROUTER and is validated by the codec; anything bad is counted, logged
(rate-limited) and dropped, never raised.

Framing: a peer's or client's DEALER sends exactly one frame (the encoded
message); the ROUTER prepends the sender's routing id, so a valid inbound is
exactly ``[identity, payload]``. A peer's DEALER routing id is its node id, a
NUL and 8 random bytes drawn when the transport opens, and a Raft message is
accepted only if its ``frm`` is the part before the NUL -- and, with CURVE on,
the node id the ZAP handler bound to the sender's key. The random part is what
keeps ``ROUTER_HANDOVER`` (a reconnecting DEALER takes its routing id over from
a connection the ROUTER still thinks alive) from handing a peer's connection to
anyone who merely knows the peer's name.

Not thread-safe: use a Transport from the one thread that created it. With
CURVE on, a Transport owns the context's ZAP handler: one per context.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
import zmq

from zraft.codec import (
    MAX_BATCH,
    MAX_ID_LEN,
    MAX_MEMBERS,
    DecodeError,
    decode_many,
    encode,
    encode_append,
    encode_batch,
)
from zraft.core.types import AppendEntries, Message
from zraft.errors import ConfigError
from zraft.protocol import ClientReply, ClientRequest
from zraft.security import ZAP_DOMAIN, CurveAuthenticator, CurveSetup, start_authenticator

Inbound = tuple[bytes, Message | ClientRequest]

STAT_KEYS = (
    "sent",
    "send_dropped",
    "received",
    "bad_dropped",
    "bytes_in",
    "bytes_out",
    "replies_sent",
    "replies_dropped",
)

# Dead connections are found by the kernel, not by ZMTP heartbeats: libzmq 4.3.5 aborts
# the process (Assertion failed: !_io_error, stream_engine_base.cpp:310) when a heartbeat
# timer fires on a connection whose input had stopped at the high-water mark and then
# failed, which a busy node meets whenever a peer dies mid-stream (the gauntlet found
# it; tests/wire/test_transport_crash.py reproduces it).
TCP_MAXRT_MS = 5000  #: data unacknowledged this long closes the connection (TCP_USER_TIMEOUT)
TCP_KEEPALIVE_IDLE_S = 2  #: an idle connection is probed after this long ...
TCP_KEEPALIVE_INTVL_S = 1  #: ... every this often ...
TCP_KEEPALIVE_CNT = 3  #: ... and closed after this many unanswered probes
CONNECT_TIMEOUT_MS = 1000  #: a connect lost in a partition is retried, not left to SYN backoff
RECONNECT_IVL_MS = 100
#: a peer that comes back is heard within this (plus a connect): at 2000 ms a cluster
#: that needed a restarted node for its quorum waited ~2 s more to elect (gauntlet seed
#: 12); a dead peer costs one refused connect per interval
RECONNECT_IVL_MAX_MS = 500
WARN_INTERVAL_S = 1.0  #: at most one bad_message_dropped warning per reason per interval
_ZERO_COPY_MIN_BYTES = 64 << 10  #: below this, copying into zmq is cheaper than tracking

_log = structlog.get_logger("zraft.transport")


def set_tcp_liveness(sock: zmq.Socket[Any]) -> None:
    """Kernel-level dead-peer detection (see TCP_MAXRT_MS); never ZMTP heartbeats."""
    sock.setsockopt(zmq.TCP_MAXRT, TCP_MAXRT_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT)


#: what a failed bind usually means, for the operator (by errno)
_BIND_HINTS = {
    errno.EADDRINUSE: " (another process is using the port)",
    errno.EADDRNOTAVAIL: " (the address is not on this host)",
}


class Transport:
    """The node's sockets. See the module docstring for the rules it enforces."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        node_id: str,
        bind: str,
        peers: Mapping[str, str],
        cluster_id: str,
        *,
        curve: CurveSetup | None = None,
        max_msg_bytes: int = 64 << 20,
        peer_sndhwm: int = 1000,
    ) -> None:
        assert 0 < len(node_id) <= MAX_ID_LEN, "node id is 1..MAX_ID_LEN chars"
        # It starts the DEALERs' ZMQ routing id: at most 255 bytes, no NUL (the separator).
        assert len(node_id.encode()) <= 255 - 9 and "\x00" not in node_id, node_id
        assert max_msg_bytes > 0 and peer_sndhwm > 0
        self._ctx = ctx
        self._node_id = node_id
        self._identity = peer_routing_id(node_id)
        self._cluster_id = cluster_id
        self._curve = curve
        self._max_msg_bytes = max_msg_bytes
        self._peer_sndhwm = peer_sndhwm
        self._source = _source_host(bind)
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._replies: dict[bytes, list[ClientReply]] = {}  # flushed once per reactor turn
        self._dealers: dict[str, tuple[str, zmq.Socket[Any]]] = {}
        self._warned: dict[str, tuple[float, int]] = {}  # reason -> (last warning, suppressed)
        self._log = _log.bind(node=node_id)
        self._closed = False
        # The ZAP handler must exist before the CURVE ROUTER binds, or libzmq admits any key.
        self._auth: CurveAuthenticator | None = start_authenticator(ctx, curve) if curve else None
        try:
            self._router = self._make_router(bind)
        except BaseException:
            if self._auth is not None:
                self._auth.stop()
            raise
        self.set_peers(peers)

    # ------------------------------------------------------------------ sockets

    def _make_router(self, bind: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # a peer's DEALER reconnecting before the ROUTER saw its old connection die
            # (a partition, a half-open TCP) takes its routing id over; a refused one
            # would never retry. Routing ids are unguessable (peer_routing_id), so only
            # the same socket can claim one.
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # unroutable replies vanish, never raise
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_msg_bytes)
            set_tcp_liveness(sock)
            if self._curve is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret_key)
                sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            try:
                sock.bind(bind)
            except zmq.ZMQError as exc:  # the operator's to fix: say so, no traceback
                code = exc.errno or 0
                reason = zmq.strerror(code) if code else str(exc)
                raise ConfigError(
                    f"cannot listen on {bind}: {reason}{_BIND_HINTS.get(code, '')}"
                ) from exc
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _make_dealer(self, peer_id: str, address: str) -> zmq.Socket[Any] | None:
        server_key = None
        if self._curve is not None:
            server_key = self._curve.peer_key(peer_id)
            if server_key is None:
                self._log.warning("peer_key_missing", peer=peer_id)
                return None
        sock: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self._identity)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer we are not connected to
            sock.setsockopt(zmq.SNDHWM, self._peer_sndhwm)
            sock.setsockopt(zmq.RCVHWM, 16)  # peers answer on our ROUTER, never here
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_msg_bytes)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            set_tcp_liveness(sock)
            if self._curve is not None and server_key is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.public_key)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret_key)
            sock.connect(_with_source(address, self._source))
        except zmq.ZMQError as exc:  # a bad address in a membership must not kill the reactor
            sock.close(linger=0)
            self._log.warning("peer_connect_failed", peer=peer_id, address=address, error=str(exc))
            return None
        return sock

    @property
    def router(self) -> zmq.Socket[Any]:
        """The inbound socket, for the reactor's Poller."""
        return self._router

    @property
    def endpoint(self) -> str:
        """The address actually bound (resolves a ``tcp://host:*`` bind)."""
        value = self._router.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(value, bytes)
        return value.decode()

    def peers(self) -> dict[str, str]:
        """Peers with an open DEALER: node id -> address."""
        return {peer: address for peer, (address, _) in self._dealers.items()}

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Membership changed: close DEALERs of removed/moved peers, open new ones.

        This node's own id is ignored, so a whole membership can be passed.
        """
        assert len(peers) <= MAX_MEMBERS, "membership size is bounded"
        wanted = {p: a for p, a in peers.items() if p != self._node_id}
        for peer, (address, sock) in list(self._dealers.items()):
            if wanted.get(peer) != address:
                sock.close(linger=0)
                del self._dealers[peer]
        for peer, address in wanted.items():
            if peer not in self._dealers:
                assert 0 < len(peer) <= MAX_ID_LEN, "peer id is 1..MAX_ID_LEN chars"
                dealer = self._make_dealer(peer, address)
                if dealer is not None:
                    self._dealers[peer] = (address, dealer)

    # ------------------------------------------------------------------ outbound

    def send(self, msg: Message, packed_entries: bytes | None = None) -> bool:
        """Queue ``msg`` for ``msg.to`` without blocking. False (counted) if it was dropped.

        ``packed_entries``: an AppendEntries' entries already packed (see
        :func:`zraft.codec.pack_entries`), shared by the messages to several followers.
        """
        assert msg.frm == self._node_id, "a node sends only its own messages"
        entry = self._dealers.get(msg.to)
        if entry is None:
            self._stats["send_dropped"] += 1
            return False
        if packed_entries is not None:
            assert isinstance(msg, AppendEntries)
            data = encode_append(msg, self._cluster_id, packed_entries)
        else:
            data = encode(msg, self._cluster_id)
        if (
            len(data) > self._max_msg_bytes
        ):  # the peer would cut the connection; the core must split
            self._stats["send_dropped"] += 1
            self._log.warning("message_too_large", to=msg.to, size_bytes=len(data))
            return False
        try:
            entry[1].send(data, zmq.NOBLOCK, copy=len(data) < _ZERO_COPY_MIN_BYTES)
        except zmq.Again:
            self._stats["send_dropped"] += 1
            return False
        except zmq.ZMQError as exc:
            self._stats["send_dropped"] += 1
            self._log.warning("send_failed", to=msg.to, error=str(exc))
            return False
        self._stats["sent"] += 1
        self._stats["bytes_out"] += len(data)
        return True

    def reply(self, identity: bytes, reply: ClientReply) -> None:
        """Answer a client now through the ROUTER; dropped (counted) if it cannot go."""
        self._send_replies(identity, [reply])

    def queue_reply(self, identity: bytes, reply: ClientReply) -> None:
        """Queue an answer; :meth:`flush_replies` sends one frame per client (fewer syscalls)."""
        queued = self._replies.get(identity)
        if queued is None:
            self._replies[identity] = [reply]
        else:
            queued.append(reply)
            if len(queued) >= MAX_BATCH:
                self._send_replies(identity, self._replies.pop(identity))

    def flush_replies(self) -> None:
        """Send every queued reply: the reactor calls this once per loop turn."""
        if self._replies:
            replies, self._replies = self._replies, {}
            for identity, batch in replies.items():
                self._send_replies(identity, batch)

    def _send_replies(self, identity: bytes, batch: list[ClientReply]) -> None:
        for data, count in self._encode_replies(batch):
            try:
                self._router.send_multipart([identity, data], zmq.NOBLOCK)
            except zmq.ZMQError:  # Again, or the client is gone
                self._stats["replies_dropped"] += count
                continue
            self._stats["replies_sent"] += count
            self._stats["bytes_out"] += len(data)

    def _encode_replies(self, batch: list[ClientReply]) -> list[tuple[bytes, int]]:
        """One frame for the batch (with its reply count); if that fails (a result msgpack
        cannot carry, or too big together), one frame per reply, each encodable."""
        try:
            data = encode_batch(batch, self._cluster_id)
            if len(data) <= self._max_msg_bytes:
                return [(data, len(batch))]
        except (TypeError, ValueError, OverflowError):
            pass
        return [(self._encode_reply(r), 1) for r in batch]

    def _encode_reply(self, reply: ClientReply) -> bytes:
        """Encode, turning a result msgpack cannot carry (or too big) into an app_error."""
        problem = ""
        try:
            data = encode(reply, self._cluster_id)
            if len(data) > self._max_msg_bytes:
                problem = f"reply of {len(data)} bytes exceeds {self._max_msg_bytes}"
        except (TypeError, ValueError, OverflowError) as exc:
            problem = f"result cannot be encoded: {type(exc).__name__}: {exc}"[:200]
        if not problem:
            return data
        self._log.warning("reply_not_encodable", req_id=reply.req_id, problem=problem)
        fallback = ClientReply(
            reply.req_id,
            False,
            error="app_error",
            message=problem,
            leader=reply.leader,
            leader_address=reply.leader_address,
        )
        return encode(fallback, self._cluster_id)

    # ------------------------------------------------------------------ inbound

    def recv(self, max_count: int = 256) -> list[Inbound]:
        """Drain up to ``max_count`` inbound messages without blocking; bad ones are dropped."""
        assert max_count > 0
        out: list[Inbound] = []
        recv = self._router.recv
        for _ in range(max_count):
            # A ROUTER puts the sender's identity first, always followed by the message.
            # Not recv_multipart: it asks the socket for RCVMORE (getsockopt) per frame,
            # where a Frame knows ``more`` itself; the payload is decoded in place.
            try:
                identity = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            frame = recv(zmq.NOBLOCK, copy=False)  # the parts of a message arrive together
            frames = [frame]
            while frame.more:
                frame = recv(zmq.NOBLOCK, copy=False)
                frames.append(frame)
            out.extend(self._accept(identity, frames))
        return out

    def _accept(self, identity: bytes, frames: list[zmq.Frame]) -> list[Inbound]:
        """Validate one inbound message (the frames after the sender's identity):
        framing, codec, and who is allowed to say it."""
        self._stats["bytes_in"] += len(identity) + sum(len(f) for f in frames)
        if len(frames) != 1:
            self._drop("bad_frame_count", identity, f"{len(frames) + 1} frames")
            return []
        payload = frames[0]
        try:
            data = payload.buffer
            msgs = decode_many(data, self._cluster_id, max_bytes=self._max_msg_bytes)
        except DecodeError as exc:
            self._drop(exc.reason, identity, exc.detail)
            return []
        if len(msgs) > 1:  # a batch holds client requests only (replies are dropped below)
            if not all(isinstance(m, ClientRequest) for m in msgs):
                self._drop("unexpected_reply", identity, "batch")
                return []
            if self._curve is not None and not _user_id(payload):
                self._drop("key_mismatch", identity, "client without a User-Id")
                return []
            self._stats["received"] += len(msgs)
            return [(identity, m) for m in msgs if isinstance(m, ClientRequest)]
        msg = msgs[0]
        if isinstance(msg, ClientReply):
            self._drop("unexpected_reply", identity, "")
            return []
        if isinstance(msg, ClientRequest):
            if self._curve is not None and not _user_id(payload):
                self._drop("key_mismatch", identity, "client without a User-Id")
                return []
        else:
            problem = self._check_sender(msg, identity, payload)
            if problem:
                self._drop(problem, identity, f"frm={msg.frm!r} to={msg.to!r}")
                return []
        self._stats["received"] += 1
        return [(identity, msg)]

    def _check_sender(self, msg: Message, identity: bytes, payload: zmq.Frame) -> str:
        """'' if ``msg`` really comes from ``msg.frm`` and is for us, else a reason code."""
        if msg.to != self._node_id:
            return "wrong_recipient"
        if identity.partition(b"\x00")[0] != msg.frm.encode():
            return "sender_mismatch"
        if self._curve is not None and _user_id(payload) != msg.frm:
            return "key_mismatch"
        return ""

    def _drop(self, reason: str, identity: bytes, detail: str) -> None:
        """Count a bad message and warn, at most once per reason per WARN_INTERVAL_S."""
        self._stats["bad_dropped"] += 1
        now = time.monotonic()
        last, suppressed = self._warned.get(reason, (-WARN_INTERVAL_S, 0))
        if now - last < WARN_INTERVAL_S:
            self._warned[reason] = (last, suppressed + 1)
            return
        self._warned[reason] = (now, 0)
        sender = identity[:64].decode("utf-8", "backslashreplace")
        self._log.warning(
            "bad_message_dropped",
            reason=reason,
            sender=sender,
            detail=detail[:200],
            suppressed=suppressed,
        )

    # ------------------------------------------------------------------ misc

    def stats(self) -> dict[str, int]:
        """Counters since start (see STAT_KEYS)."""
        return dict(self._stats)

    def close(self) -> None:
        """Close every socket (linger 0) and stop the ZAP handler. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.flush_replies()
        for _, sock in self._dealers.values():
            sock.close(linger=0)
        self._dealers.clear()
        self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def _source_host(bind: str) -> str:
    """The IPv4 address peers should see our connections come from ('' = kernel's choice).

    A node bound to one specific address (e.g. 127.0.0.2) connects from it too, so a
    firewall rule on a node's address covers its traffic both ways (multi-homed hosts,
    and the gauntlet's per-node loopback addresses).
    """
    m = re.match(r"^tcp://(\d{1,3}(?:\.\d{1,3}){3}):\d+$", bind)
    if m is None or m.group(1) == "0.0.0.0":
        return ""
    return m.group(1)


def _with_source(address: str, source: str) -> str:
    """``tcp://SRC:0;HOST:PORT`` (libzmq's source-address syntax) for TCP peers."""
    if not source or not address.startswith("tcp://") or ";" in address:
        return address
    return f"tcp://{source}:0;{address[len('tcp://') :]}"


def peer_routing_id(node_id: str) -> bytes:
    """The routing id of this process's DEALERs: the node id, a NUL, 8 random bytes.

    A restarted node draws a new one, so it never collides with the connection its
    previous life left behind; nobody can claim it without having read it.
    """
    return node_id.encode() + b"\x00" + os.urandom(8)


def _user_id(frame: zmq.Frame) -> str:
    """The ZAP User-Id of the connection a frame came in on ('' if none)."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    return user if isinstance(user, str) else ""
