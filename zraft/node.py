"""The node actor: one reactor thread owning the core, the disk, the sockets, the state machine.

Everything that changes Raft state happens on the reactor thread, in this order
per batch (the core's Ready contract): persist (one fsync), send, apply, advance.
Other threads talk to the reactor only through a call queue plus a ZeroMQ inproc
wake-up, and get answers through futures, so nothing mutable is shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import queue
import random
import shutil
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import structlog
import zmq

from zraft import codec
from zraft.budget import TurnBudget
from zraft.config import ADDR_RE, ID_RE, Config
from zraft.core import ProgressState
from zraft.core import raft as core_raft
from zraft.core.types import (
    NONE,
    AppendEntries,
    Compacted,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    Ready,
    Role,
    SnapshotMeta,
    Unavailable,
)
from zraft.errors import (
    ApplicationError,
    BusyError,
    ChangeInProgress,
    CommandFailed,
    ConfigError,
    NodeStopped,
    NoSuchCommand,
    NotLeaderError,
    ReadTimeout,
    StorageFailedError,
    UnknownOutcome,
    ZraftError,
    error_from_code,
)
from zraft.events import Event, EventBus
from zraft.kv import KV
from zraft.metrics import Histogram
from zraft.protocol import ClientReply, ClientRequest
from zraft.sessions import Result, Reused, SessionLimits, SessionTable, Stale
from zraft.statemachine import StateMachine
from zraft.storage import Storage, StorageFailed
from zraft.storage.records import REC_HDR_BYTES
from zraft.storage.storage import DEFAULT_MAX_RECORD_BYTES
from zraft.transport import Inbound, Transport

_WAKE = b"w"
_PROMOTE_SLACK = 64  #: a learner within this many entries of commit counts as caught up
_INBOUND_SLICE = 16  #: messages read between two looks at the clock
_INBOUND_MAX = 1024  #: messages one turn reads at most


class _CommitHistory:
    """Recent (time, commit index) samples on a leader: how far behind in *time* a
    learner is. Under steady load a healthy learner trails the commit index by the
    entries in flight, often thousands, so an entry count alone kept it a learner until
    the load paused; what matters (dissertation 4.2.1) is that it is less than a round
    of replication behind, so that as a voter it does not stall commits."""

    def __init__(self, window_s: float) -> None:
        assert window_s > 0
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, commit: int) -> None:
        self._samples.append((now, commit))
        # keep one sample at or before the window's start: the commit index back then
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def clear(self) -> None:
        self._samples.clear()

    def caught_up(self, match: int, commit: int, now: float) -> bool:
        """Within a few entries of commit, or holding all that was committed window_s ago."""
        if commit - match <= _PROMOTE_SLACK:
            return True
        if not self._samples:
            return False
        then, old_commit = self._samples[0]
        return then <= now - self.window_s and match >= old_commit


_NO_RESULT = object()
#: A leader sending a snapshot defers automatic ones until this many intervals are due:
#: each newer one pushes the transfer's snapshot toward pruning (keep_snapshots), and a
#: transfer longer than that restarts from zero. The bound caps the log's growth.
SNAPSHOT_DEFER_LIMIT = 4
#: stop() waits this long for a snapshot being written; its callers are told "stopped"
SNAPSHOT_STOP_WAIT_S = 30.0
#: room an AppendEntries needs around one entry's data (ids, term and index fields)
ENTRY_FRAME_MARGIN_BYTES = 4096


@dataclass(slots=True)
class Outcome:
    """The answer to one request, whichever way it came in (embedded call or ROUTER client)."""

    ok: bool
    result: Any = None
    error: str = ""
    message: str = ""
    leader: str = ""
    address: str = ""

    def to_reply(self, req_id: int) -> ClientReply:
        return ClientReply(
            req_id,
            self.ok,
            self.result if self.ok else None,
            self.error,
            self.message,
            self.leader,
            self.address,
        )

    def unwrap(self) -> Any:
        if self.ok:
            return self.result
        if self.error == "app_error":
            raise ApplicationError.from_message(self.message)
        raise error_from_code(self.error, self.message, self.leader, self.address)


Deliver = Callable[[Outcome], None]
Command = tuple[bytes, int, str, tuple[Any, ...]]  #: client_id, seq, name, args
_Proposal = tuple[bytes, Deliver, float, Command | None]


@dataclass(slots=True)
class _Pending:
    term: int
    deliver: Deliver
    deadline: float
    #: the command as the entry's bytes decode: a client request's as the codec decoded
    #: it off the wire, an embedded call's with flat arguments as given (see
    #: codec.encode_local_command); applying here need not decode them again
    cmd: Command | None = None


@dataclass(slots=True)
class _Read:
    name: str
    args: tuple[Any, ...]
    deliver: Deliver
    deadline: float
    lease: bool = False  #: the caller accepts a lease read (consistency="lease")


_SCALARS = (bool, float, bytes)  # not str: a lone surrogate cannot be encoded


def _wire_safe(out: Outcome) -> Outcome:
    """Deterministically turn a result msgpack cannot carry into an app_error.

    Every node applies the same handler to the same entry, so every node makes the
    same choice, and the session table (which snapshots pack) only holds packable data.
    """
    if out.result is None or type(out.result) in _SCALARS:
        return out  # common and always packable (an int may overflow: it is checked below)
    try:
        # both ways: a tuple-keyed dict packs, but reads back with list keys (unhashable),
        # which would break the client's reply and every snapshot's session table
        packed = msgpack.packb(out.result, use_bin_type=True)
        msgpack.unpackb(packed, raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as exc:
        return Outcome(
            False,
            error="app_error",
            message=f"result cannot be encoded: {type(exc).__name__}: {exc}"[:300],
        )
    return out


def _remembered_outcome(remembered: Result | Stale | Reused, seq: int) -> Outcome:
    """The answer to a command its session has seen (or has forgotten) before."""
    if isinstance(remembered, Stale):
        return Outcome(
            False,
            error="unknown_outcome",
            message="sequence number older than the session window",
        )
    if isinstance(remembered, Reused):
        return Outcome(
            False,
            error="bad_request",
            message=f"sequence number {seq} of this client id came with another command"
            " before: two clients share the id, or one reused its numbers (not applied)",
        )
    return Outcome(*remembered)


#: voters + learners: each member costs every node a socket, and a ZeroMQ context holds
#: at most 1023 (the codec's own bound, 1024, is higher)
MAX_CLUSTER_MEMBERS = 256


def _membership_problem(m: Membership) -> str:
    """Why the cluster could not carry ``m`` (as the codec and the transport see it)."""
    ids = m.ids()
    if len(ids) > MAX_CLUSTER_MEMBERS:
        return f"a cluster has at most {MAX_CLUSTER_MEMBERS} members (voters + learners)"
    for node_id in ids:
        if len(m.address(node_id) or "") > codec.MAX_ADDRESS_LEN:
            return f"member {node_id}'s address exceeds {codec.MAX_ADDRESS_LEN} characters"
    return ""


def _worth_logging(count: int) -> bool:
    """A recurring event is logged at its 1st, 2nd, 4th, 8th... time: seen, never a flood."""
    return count > 0 and count & (count - 1) == 0


_WATCH_TICK_S = 0.25  #: how often a loop checks for calls the reactor never answered


class _LoopInbox:
    """Outcomes bound for one asyncio loop's futures: one thread-safe wake-up per batch,
    and one watchdog for every call on the loop that the reactor might never answer.

    A ``call_soon_threadsafe`` per outcome writes to the loop's self-pipe once per
    command; under load that cost more than the command itself. A ``call_later`` per
    call cost the embedded bench a quarter of its loop thread (a heap of thousands of
    timers, each compared in Python, each cancelled and popped), so calls wait in
    buckets by give-up tick (:data:`_WATCH_TICK_S`) and a sweep at each tick's end
    answers the unanswered: a call gives up at most a tick after its time, never
    before. Only the reactor thread calls :meth:`put`; only the loop thread the rest.
    """

    __slots__ = ("items", "loop", "scheduled", "sweeping", "watched")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[asyncio.Future[Outcome], Outcome]] = deque()
        self.scheduled = False
        #: give-up tick -> the futures due then, each with the error it gives up with;
        #: a bucket goes as soon as it is empty (a call answered leaves it at once)
        self.watched: dict[int, dict[asyncio.Future[Outcome], str]] = {}
        self.sweeping = False

    def deliverer(self, fut: asyncio.Future[Outcome]) -> Deliver:
        return lambda outcome: self.put(fut, outcome)

    def put(self, fut: asyncio.Future[Outcome], outcome: Outcome) -> None:
        self.items.append((fut, outcome))
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # loop closed: nobody awaits any more
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # clear the flag before taking items: a put racing with us schedules another drain
        self.scheduled = False
        items = self.items
        while items:
            fut, outcome = items.popleft()
            if not fut.done():  # the awaiting task may have been cancelled
                fut.set_result(outcome)

    def watch(self, fut: asyncio.Future[Outcome], wait_s: float, late: str) -> int:
        """Answer ``fut`` with ``late`` unless it is answered within ``wait_s``. Returns
        the tick to :meth:`unwatch` it by (0, never swept, when ``wait_s`` is infinite)."""
        if not math.isfinite(wait_s):
            return 0
        tick = int((self.loop.time() + wait_s) / _WATCH_TICK_S) + 1
        bucket = self.watched.get(tick)
        if bucket is None:
            bucket = self.watched[tick] = {}
            if not self.sweeping:
                self.sweeping = True
                self._sweep_next(int(self.loop.time() / _WATCH_TICK_S))
        bucket[fut] = late
        return tick

    def unwatch(self, tick: int, fut: asyncio.Future[Outcome]) -> None:
        bucket = self.watched.get(tick)
        if bucket is not None:
            bucket.pop(fut, None)
            if not bucket:
                del self.watched[tick]

    def _sweep_next(self, now_tick: int) -> None:
        # at the next tick's end: everything due by then has passed its give-up time
        self.loop.call_at((now_tick + 1) * _WATCH_TICK_S, self._sweep)

    def _sweep(self) -> None:
        # a timer may fire a hair early: this tick then waits for the sweep just after
        now_tick = int(self.loop.time() / _WATCH_TICK_S)
        for tick in [t for t in self.watched if t <= now_tick]:
            for fut, late in self.watched.pop(tick).items():
                if not fut.done():  # the reactor's answer, if it ever comes, is dropped
                    fut.set_result(Outcome(False, error=late, message="no answer in time"))
        self.sweeping = bool(self.watched)
        if self.sweeping:
            self._sweep_next(now_tick)


class Node:
    """A Raft node embedded in this process. See the README's embedding guide.

    ``start()`` runs the reactor in a background thread; ``run()`` runs it in the
    calling thread until ``stop()``. ``apply``/``query`` are thread-safe and block;
    ``apply_async``/``query_async`` are their awaitable twins.
    """

    def __init__(self, config: Config, state_machine: StateMachine | None = None) -> None:
        self.config = config.validate()
        self.sm = state_machine if state_machine is not None else KV()
        self.events = EventBus()
        self.log = structlog.get_logger("zraft").bind(node=config.node_id)
        # CURVE needs a context of its own: a context has one ZAP authenticator
        self._ctx: zmq.Context[zmq.Socket[bytes]] = (
            zmq.Context() if config.curve_keys else zmq.Context.instance()
        )
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        #: embedded apply() calls, taken in batches (no closure, no queue lock per command)
        self._submitted: deque[_Proposal] = deque()
        self._wake_armed = False  #: a wake-up is in flight: the reactor will drain both queues
        self._wake_addr = f"inproc://zraft-wake-{id(self)}"
        self._tls = threading.local()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self._last_status: dict[str, Any] = {"id": config.node_id, "role": "stopped"}
        # reactor-owned state (touched only on the reactor thread once started)
        self._proposals: list[_Proposal] = []
        self._closing = False
        self._vote = ""
        self._pending: dict[int, _Pending] = {}
        self._reads_new: list[_Read] = []
        self._reads_by_ctx: dict[bytes, list[_Read]] = {}
        self._reads_waiting: deque[tuple[int, list[_Read]]] = deque()
        self._read_ctx = itertools.count(1)
        #: what our no-ops propose when we lead; cluster-wide limits arrive with each
        #: leader's no-op, and ours apply until the first one
        self._own_limits = SessionLimits(config.session_window, config.max_sessions)
        self._sessions = SessionTable(self._own_limits)
        self._applied = 0
        self._applied_term = 0
        self._applied_membership = Membership()
        self._last_snapshot_index = 0  #: of the newest snapshot on disk
        self._snapshot_retry_from = 0  #: applied index of the last failed attempt
        #: the largest command: an AppendEntries frame must carry it (the message around
        #: it aside) and one log record hold it; beyond either it would stop the cluster
        self._max_entry_bytes = min(
            config.max_frame_bytes - ENTRY_FRAME_MARGIN_BYTES - len(config.cluster_id.encode()),
            DEFAULT_MAX_RECORD_BYTES - REC_HDR_BYTES,
        )
        seed = config.seed if config.seed is not None else time.time_ns()
        self._rng = random.Random(hash((config.node_id, seed)))
        #: extra entries this node waits before its next automatic snapshot
        self._snapshot_jitter = self._rng.randrange(config.snapshot_entries // 4 + 1)
        self._snapshot_thread: threading.Thread | None = None
        #: take_snapshot() calls that came while one was being written: (applied, deliver)
        self._snapshot_waiters: list[tuple[int, Deliver]] = []
        #: learners to promote once caught up -> log index they must hold first
        self._promote: dict[str, int] = {}
        #: half the shortest election timeout: a learner this close may vote
        self._commits = _CommitHistory(config.election_ticks * config.tick_ms / 2000)
        #: peer addresses learned while joining, before our log holds any membership
        self._join_peers: dict[str, str] = {}
        self._client_status: dict[str, Any] = {}  #: see _status_for_clients
        self._client_status_at = -1.0
        self._join_marker = False  #: the storage's "joining" file exists (see _open)
        self._dropped_non_member = 0
        self._snap_sending: dict[tuple[str, int], float] = {}  #: (peer, index) -> started
        self._hb_sent: dict[str, float] = {}
        self._leader_known = threading.Event()  #: set while a leader is known (see _soft)
        self._hb_answered: dict[str, float] = {}  #: peer -> when its last heartbeat reply came
        #: callers of transfer_leadership: (target, deliver), answered when it is done
        self._transfers: list[tuple[str, Deliver]] = []
        #: target-less transfers waiting (until the deadline) for a voter to answer
        self._transfer_picks: list[tuple[float, Deliver]] = []
        self._lost_logged = 0  #: the core's lost_reports when last looked at
        self._damaged_snapshots = 0  #: storage's snapshots_set_aside() when last looked at
        self._snapshots_rejected = 0  #: received snapshots that failed their checksum
        self._last_leader_contact = time.monotonic()
        self._storage_error = ""
        self._log_syncing = False  #: a leader's log flush runs on the storage's helper thread
        self._soft: tuple[Role, str, int] = (Role.FOLLOWER, NONE, 0)
        self._turn_persist_s = 0.0  #: this reactor turn's time in _persist (see slow_turn)
        self._turn_apply_s = 0.0  #: ... and in sending + applying
        self._turn_us = Histogram()  #: reactor turns that did work (see status()["metrics"])
        self._budget = TurnBudget(config.max_batch, config.turn_budget_ms)
        self._turn_proposed = 0  #: commands this turn proposed (for the budget)
        self._append_batch = Histogram()  #: entries per log append (one fsync each)
        #: a client's command on this node: read off the socket -> its reply queued
        self._command_us = Histogram()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> Node:
        """Open storage, bind sockets and run the reactor in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("node already started")
        self._thread = threading.Thread(
            target=self._thread_main, name=f"zraft-{self.config.node_id}", daemon=True
        )
        self._thread.start()
        if not self._running.wait(timeout) or self._start_error is not None:
            if self._start_error is None:  # still opening: it must not go on to serve
                self._post(self._request_stop)
            self._thread.join(timeout=5)
            err = self._start_error or NodeStopped("node did not start in time")
            raise err
        return self

    def run(self) -> None:
        """Run the reactor in this thread until :meth:`stop` (or a signal handler calling it)."""
        self._thread = threading.current_thread()
        self._thread_main()
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the reactor; pending requests fail with NodeStopped (or UnknownOutcome)."""
        if self._stopped.is_set() or self._thread is None:
            return
        self._post(self._request_stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.events.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API

    def apply(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Replicate command ``name(*args)``; block until applied here; return its result.

        Raises NotLeaderError (with a leader hint), BusyError, ApplicationError (the
        handler raised), or UnknownOutcome when it may or may not have been applied.
        """
        fut = self._submit_apply(name, args, timeout)
        return self._wait(fut, timeout, unknown=True)

    def query(
        self, name: str, *args: Any, consistency: str = "linearizable", timeout: float | None = None
    ) -> Any:
        """Run read-only query ``name(*args)``: "linearizable" (ReadIndex), "lease", or "local"."""
        fut = self._submit_query(name, args, consistency, timeout)
        return self._wait(fut, timeout, unknown=False)

    async def apply_async(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        if not isinstance(name, str):
            raise TypeError("command name must be a str")
        self._check_running()
        data, cmd = codec.encode_local_command(name, args)
        fut, inbox, tick = self._loop_answer(timeout, "unknown_outcome")
        self._submit(data, inbox.deliverer(fut), self._deadline(timeout), cmd)
        try:  # awaited here, not in a shared coroutine: one more per call cost ~20%
            outcome = await fut
        finally:
            inbox.unwatch(tick, fut)
        return outcome.unwrap()

    async def query_async(
        self, name: str, *args: Any, consistency: str = "linearizable", timeout: float | None = None
    ) -> Any:
        post = self._read_poster(name, args, consistency, timeout)
        fut, inbox, tick = self._loop_answer(timeout, "timeout")
        post(inbox.deliverer(fut))
        try:
            outcome = await fut
        finally:
            inbox.unwatch(tick, fut)
        return outcome.unwrap()

    def _loop_answer(
        self, timeout: float | None, late: str
    ) -> tuple[asyncio.Future[Outcome], _LoopInbox, int]:
        """A future on the running loop, the loop's inbox (the reactor answers through
        it), and the watchdog tick after which it answers ``late`` (the reactor is stuck).
        Not asyncio.wait_for: a task per call cost the embedded bench 25-30%."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        inbox = getattr(self._tls, "inbox", None)
        if inbox is None or inbox.loop is not loop:
            inbox = self._tls.inbox = _LoopInbox(loop)
        return fut, inbox, inbox.watch(fut, self._wait_s(timeout), late)

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """The leader's id once this node knows one (ReadTimeout if none within
        ``timeout``): a node that has just started knows none until an election ends, and
        ``apply`` on it meanwhile raises NotLeaderError at once."""
        self._check_running()
        deadline = time.monotonic() + timeout
        while True:
            leader = self._soft[1]
            if leader:
                return leader
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeout(f"no leader known to {self.config.node_id} after {timeout}s")
            self._leader_known.wait(min(left, 0.05))  # bounded: a set/clear race costs 50 ms

    def on(self, event: str, callback: Callable[[Event], None]) -> None:
        """Call ``callback(Event)`` on each ``event`` ("*" for all), on the event thread."""
        self.events.subscribe(event, callback)

    def off(self, event: str, callback: Callable[[Event], None]) -> None:
        self.events.unsubscribe(event, callback)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """id, role, term, leader, commit/applied/last index, members, snapshot index, peers."""
        if not self._running.is_set() or threading.current_thread() is self._thread:
            return dict(self._last_status)
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._post(lambda: fut.set_result(self._status()))
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            return dict(self._last_status)

    def add_member(
        self, node_id: str, address: str, voter: bool = True, timeout: float | None = None
    ) -> int | None:
        """Add a node as a learner; if ``voter``, promote it once it has caught up.

        Returns the log index of a membership that includes it."""
        out: int | None = self._call_outcome(
            lambda d: self._do_add_member(node_id, address, voter, d), timeout
        )
        return out

    def remove_member(self, node_id: str, timeout: float | None = None) -> None:
        """Remove a node (voter or learner). Removing the leader steps it down after commit."""
        self._call_outcome(lambda d: self._do_remove_member(node_id, d), timeout)

    def transfer_leadership(self, to: str | None = None, timeout: float | None = None) -> str:
        """Hand leadership to ``to`` (default: the most caught-up voter that answers
        heartbeats); returns the target once this node has stepped down for it.

        Raises CommandFailed when the target did not take over within an election
        timeout (this node still leads) or no voter is there to take it.
        """
        result: str = self._call_outcome(lambda d: self._do_transfer(to, d), timeout)
        return result

    def take_snapshot(self, timeout: float | None = None) -> int:
        """Snapshot the state machine now; returns the snapshot's last index once durable.

        While another snapshot is being written this waits for it, and takes one more
        if that one does not cover everything applied when this was called.
        """
        result: int = self._call_outcome(self._do_manual_snapshot, timeout)
        return result

    # ------------------------------------------------------------------ calls into the reactor

    def _post(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)
        self._wake_reactor()

    def _submit(self, data: bytes, deliver: Deliver, deadline: float, cmd: Command | None) -> None:
        self._submitted.append((data, deliver, deadline, cmd))
        self._wake_reactor()

    def _wake_reactor(self) -> None:
        """Wake the reactor unless a wake-up is already on its way.

        The reactor clears ``_wake_armed`` before it drains the queues, so an item
        queued after the drain began either is seen by it or arms a fresh wake-up.
        """
        if self._stopped.is_set():
            self._fail_late_calls()
            return
        if self._wake_armed:
            return
        self._wake_armed = True
        sock = getattr(self._tls, "wake", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(self._wake_addr)
            self._tls.wake = sock
        with contextlib.suppress(zmq.ZMQError):
            sock.send(_WAKE, zmq.NOBLOCK)

    def _deadline(self, timeout: float | None) -> float:
        seconds = timeout if timeout is not None else self.config.request_timeout_ms / 1000
        return time.monotonic() + seconds

    def _submit_apply(
        self, name: str, args: tuple[Any, ...], timeout: float | None
    ) -> concurrent.futures.Future[Outcome]:
        if not isinstance(name, str):
            raise TypeError("command name must be a str")
        self._check_running()
        fut: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        data, cmd = codec.encode_local_command(name, tuple(args))
        self._submit(data, fut.set_result, self._deadline(timeout), cmd)
        return fut

    def _submit_query(
        self, name: str, args: tuple[Any, ...], consistency: str, timeout: float | None
    ) -> concurrent.futures.Future[Outcome]:
        fut: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._read_poster(name, args, consistency, timeout)(fut.set_result)
        return fut

    def _read_poster(
        self, name: str, args: tuple[Any, ...], consistency: str, timeout: float | None
    ) -> Callable[[Deliver], None]:
        """Check a query now (the caller gets the error); post it once given its deliverer."""
        if consistency not in ("linearizable", "lease", "local"):
            raise ValueError(f"consistency {consistency!r}: linearizable, lease or local")
        self._check_running()
        deadline = self._deadline(timeout)

        def post(deliver: Deliver) -> None:
            read = _Read(name, tuple(args), deliver, deadline)
            self._post(lambda: self._enqueue_read(read, consistency))

        return post

    def _call_outcome(self, body: Callable[[Deliver], None], timeout: float | None) -> Any:
        self._check_running()
        fut: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._post(lambda: body(fut.set_result))
        return self._wait(fut, timeout, unknown=True)

    def _wait(
        self, fut: concurrent.futures.Future[Outcome], timeout: float | None, unknown: bool
    ) -> Any:
        try:
            outcome = fut.result(self._wait_s(timeout))
        except concurrent.futures.TimeoutError:
            if unknown:
                raise UnknownOutcome(
                    "no answer in time; the command may have been applied"
                ) from None
            raise ReadTimeout("no answer in time") from None
        return outcome.unwrap()

    def _wait_s(self, timeout: float | None) -> float:
        """How long a caller waits: the request's deadline, plus a second for the answer."""
        return (timeout if timeout is not None else self.config.request_timeout_ms / 1000) + 1.0

    def _check_running(self) -> None:
        if self._stopped.is_set() or self._thread is None:
            raise NodeStopped(f"node {self.config.node_id} is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a node's methods cannot be called from its own reactor thread (a command"
                " or query handler): the call would wait for the turn it is running in"
            )

    # ------------------------------------------------------------------ reactor: setup and loop

    def _thread_main(self) -> None:
        # every line logged on this thread names the node, the storage's too (its logger
        # is the module's): `zraft tail --node` would hide them otherwise
        structlog.contextvars.bind_contextvars(node=self.config.node_id)
        data_dir = Path(self.config.data_dir)
        made_dir = not data_dir.exists()
        try:
            self._open()
        except BaseException as exc:  # reported to start()/run()
            self._start_error = exc
            self.log.error("node_start_failed", error=str(exc))
            if made_dir and self._nothing_written():  # a refused first start leaves no
                shutil.rmtree(data_dir, ignore_errors=True)  # skeleton (we hold its lock)
            self._release_resources()
            self._closing = True
            self._running.set()
            self._stopped.set()
            return
        try:
            self._running.set()
            self._loop()
        except BaseException as exc:  # a bug or a failing user restore(): say so, then stop
            self._start_error = exc
            self.log.exception("reactor_crashed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._shutdown()

    def _open(self) -> None:
        cfg = self.config
        self.storage = Storage.open(
            cfg.data_dir,
            segment_bytes=cfg.segment_bytes,
            fsync=cfg.fsync,
            keep_snapshots=cfg.keep_snapshots,
        )
        # Listen before writing anything: a node that cannot bind its address must not
        # leave an identity or a bootstrap membership naming it behind.
        curve = None
        if cfg.curve_keys:
            from zraft.security import CurveSetup

            curve = CurveSetup.from_dir(cfg.curve_keys, cfg.node_id)
        self.transport = Transport(
            self._ctx,
            cfg.node_id,
            cfg.bind,
            {},
            cfg.cluster_id,
            curve=curve,
            max_msg_bytes=cfg.max_frame_bytes,
        )
        if self.storage.is_empty() and not cfg.peers and not cfg.join:
            # it would drop every message (no member may speak to it) and wait forever
            raise ConfigError(
                f"{cfg.data_dir} holds no state and there are neither peers to bootstrap"
                " nor a cluster to join: give --cluster (a new cluster) or --join ENDPOINT"
                " (a running one, also for a node added with `zraft members add`)"
            )
        self.storage.claim(cfg.node_id, cfg.cluster_id)
        self.storage.check_hard_state_present()
        if self.storage.is_empty():
            if cfg.join:  # before anything lands in the log: see Raft.await_join
                self.storage.set_joining(None)
            if cfg.peers:
                self.storage.bootstrap(Membership(voters=dict(cfg.peers)))
                self.log.info("cluster_bootstrapped", voters=sorted(cfg.peers))
        elif cfg.peers and not cfg.join and not self.storage.joining()[0]:
            # a repaired hard state may have lost its bootstrap membership (the storage
            # takes this one back only if nothing else names members, and logs it)
            self.storage.readopt_bootstrap(Membership(voters=dict(cfg.peers)))
        elif cfg.peers:
            self.log.info("bootstrap_ignored", reason="data dir already holds state")
        self._restore_from_snapshot()
        seed = cfg.seed if cfg.seed is not None else hash((cfg.node_id, time.time_ns()))
        core_cfg = core_raft.CoreConfig(
            node_id=cfg.node_id,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            pre_vote=cfg.pre_vote,
            check_quorum=cfg.check_quorum,
            lease_reads=cfg.lease_reads,
            max_msg_bytes=cfg.max_msg_bytes,
            max_inflight_msgs=cfg.max_inflight_msgs,
            snapshot_chunk_bytes=cfg.snapshot_chunk_bytes,
            leader_noop_data=self._own_limits.encode(),
            seed=seed & 0xFFFFFFFF,
        )
        self.core = core_raft.Raft(core_cfg, self.storage, applied=self._applied)
        waiting, join_index = self.storage.joining()
        self._join_marker = waiting
        if waiting:
            self.core.await_join(join_index)
        membership = self.core.membership
        known_at = membership.address(cfg.node_id)
        if known_at and known_at != cfg.address:
            self.log.warning(  # peers dial the membership's address, not our new one
                "address_differs_from_membership",
                member_address=known_at,
                configured=cfg.address,
                hint="set advertise to the old address; or remove the member, wipe this"
                " data dir and start it with --join",
            )
        self._soft = (self.core.role, self.core.leader, self.core.term)
        self._peers_for = self.core.membership
        self._vote = self.storage.initial_state()[0].vote
        self.transport.set_peers(self._routes())
        self._wake = self._ctx.socket(zmq.PULL)
        self._wake.setsockopt(zmq.LINGER, 0)
        self._wake.bind(self._wake_addr)
        self.log.info(
            "node_started",
            address=cfg.address,
            term=self.core.term,
            voters=sorted(membership.voters),
            learners=sorted(membership.learners),
            last_index=self.storage.last_index(),
            applied=self._applied,
        )
        self.events.emit("node_started", cfg.node_id, None)
        if cfg.join and (cfg.node_id not in membership.voters or waiting):  # ask until a voter
            self._start_join_thread(cfg.join)
        elif membership.voters.keys() == {cfg.node_id} and self.storage.last_index() == 0:
            self.core.campaign()  # a brand-new single-node cluster elects itself at once

    def _routes(self) -> dict[str, str]:
        """Whom this node keeps a DEALER to: whoever may be the leader it must answer.

        The latest membership, and the committed one: a leader that removed itself
        leads until its removal commits, and the acks that commit it go to it. A node
        that joined hears from the leader while replaying its log from the start,
        through memberships that may not name that leader (it was removed and added
        back once); until it has applied the entry that added it, the members it
        joined through count too, with their current addresses.
        """
        addrs: dict[str, str] = {}
        for m in (self._applied_membership, self.core.membership):
            addrs.update(m.learners)
            addrs.update(m.voters)
        if self._join_marker or not self.core.membership.ids():
            addrs.update(self._join_peers)
        addrs.pop(self.config.node_id, None)
        return addrs

    def _loop(self) -> None:
        poller = zmq.Poller()
        router = self.transport.router
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        tick_s = self.config.tick_ms / 1000
        next_tick = time.monotonic() + tick_s
        self._stop_requested = False
        slow_s = self.config.slow_turn_ms / 1000
        max_turn_s = self._budget.max_turn_s
        while not self._stop_requested:
            busy = (
                self._proposals or self._reads_new or self.core.has_ready() or self._calls_waiting()
            )
            wait_ms = 0 if busy else max(0, int((next_tick - time.monotonic()) * 1000) + 1)
            ready_socks = dict(poller.poll(wait_ms))
            t_start = time.monotonic()
            if router in ready_socks:
                self._on_inbound(t_start + max_turn_s / 2)
            t_inbound = time.monotonic()
            if self._wake in ready_socks or self._calls_waiting():
                self._drain_calls()
            if self._log_syncing:
                self._check_log_synced()
            now = time.monotonic()
            t_calls = now
            if now >= next_tick:
                # a stalled reactor (GC, slow disk, SIGSTOP) owes the core the time that
                # passed, or a leader's lease would outlive the stall; bounded catch-up
                owed = min(int((now - next_tick) / tick_s) + 1, 2 * self.config.election_ticks)
                self.core.catch_up(owed)
                next_tick = max(next_tick + owed * tick_s, now)
                self._housekeeping(now)
            self._flush_proposals()
            self._flush_reads()
            t_ready = time.monotonic()
            self._turn_persist_s = self._turn_apply_s = 0.0
            while self.core.has_ready():
                self._handle_ready(self.core.ready())
                if time.monotonic() - t_start > max_turn_s:
                    break  # a backlog (a restart's applies): inbound and heartbeats first
            self.transport.flush_replies()
            t_end = time.monotonic()
            if ready_socks or busy:
                self._turn_us.observe(int((t_end - t_start) * 1e6))
            self._budget.observe(t_end - t_start, self._turn_proposed)
            if t_end - t_start > slow_s:
                self._log_slow_turn(t_start, t_inbound, t_calls, t_ready, t_end)
            self._turn_proposed = 0

    def _log_slow_turn(
        self, t_start: float, t_inbound: float, t_calls: float, t_ready: float, t_end: float
    ) -> None:
        """Say where a long turn went: heartbeats and replies all wait for the turn to end."""

        def ms(seconds: float) -> float:
            return round(seconds * 1000, 1)

        self.log.warning(
            "slow_turn",
            total_ms=ms(t_end - t_start),
            inbound_ms=ms(t_inbound - t_start),
            calls_ms=ms(t_calls - t_inbound),
            tick_and_propose_ms=ms(t_ready - t_calls),
            ready_ms=ms(t_end - t_ready),
            persist_ms=ms(self._turn_persist_s),
            apply_ms=ms(self._turn_apply_s),
            proposed=self._turn_proposed,
            next_budget=self._budget.size,
        )

    def _calls_waiting(self) -> bool:
        return bool(self._submitted) or not self._calls.empty()

    def _drain_calls(self) -> None:
        with contextlib.suppress(zmq.Again):
            for _ in range(10_000):
                self._wake.recv(zmq.NOBLOCK)
        self._wake_armed = False  # before draining: see _wake_reactor
        self._run_queued_calls()

    def _run_queued_calls(self) -> None:
        """Run posted calls and take submitted commands, one batch's worth per turn."""
        submitted = self._submitted
        room = self._budget.size - len(self._proposals)
        for _ in range(min(len(submitted), room)):
            self._enqueue_proposal(*submitted.popleft())
        for _ in range(100_000):
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    def _fail_late_calls(self) -> None:
        """A call queued after the reactor's last drain: answer it here, or it would hang.

        The reactor is gone, so its state is quiescent; ``_closing`` makes every
        request handler answer "stopped" without touching storage."""
        assert self._closing, "only after shutdown"
        with contextlib.suppress(IndexError):
            while True:
                self._enqueue_proposal(*self._submitted.popleft())
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                fn()

    def _nothing_written(self) -> bool:
        """True if this start wrote no state (an identity file alone is none: a later
        start may still replace it)."""
        storage: Storage | None = getattr(self, "storage", None)
        if storage is None:  # never opened (locked by another process, say): not ours
            return False
        try:
            return storage.is_empty()
        except Exception:  # a half-opened storage: keep what is there
            return False

    def _release_resources(self) -> None:
        """Close whatever _open managed to open (after a failed start, too)."""
        for name in ("transport", "_wake", "storage"):
            thing = getattr(self, name, None)
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()

    def _request_stop(self) -> None:
        self._stop_requested = True

    def _shutdown(self) -> None:
        self._closing = True
        self._run_queued_calls()
        stopped = Outcome(False, error="stopped", message="node stopped")
        for _, deliver in [*self._transfers, *self._transfer_picks]:
            deliver(stopped)
        self._transfers.clear()
        self._transfer_picks.clear()
        for p in self._pending.values():
            p.deliver(
                Outcome(
                    False,
                    error="unknown_outcome",
                    message="node stopped before the command was known to commit",
                )
            )
        self._pending.clear()
        for _, deliver, _, _ in self._proposals:
            deliver(stopped)
        self._proposals.clear()
        for reads in [
            self._reads_new,
            *self._reads_by_ctx.values(),
            *(r for _, r in self._reads_waiting),
        ]:
            for r in reads:
                r.deliver(stopped)
        if self._snapshot_thread is not None:
            self._snapshot_thread.join(timeout=SNAPSHOT_STOP_WAIT_S)
        self._run_queued_calls()
        for _, d in self._snapshot_waiters:  # the write outlived the join: no answer coming
            d(stopped)
        self._snapshot_waiters.clear()
        self._release_resources()
        self._last_status = {
            **self._last_status,
            "role": "stopped",
            "storage_error": self._storage_error,
        }
        self.log.info("node_stopped")
        self.events.emit("node_stopped", self.config.node_id, None)
        self._running.clear()
        self._stopped.set()
        self._fail_late_calls()

    # ------------------------------------------------------------------ inbound messages

    def _on_inbound(self, deadline: float) -> None:
        """Step what the ROUTER holds, in slices, until the turn has used half its time:
        after a heal or a pause the queue holds seconds of work, and the turn's Readies
        (persisting what was stepped), ticks and heartbeats wait on it."""
        for _ in range(_INBOUND_MAX // _INBOUND_SLICE):
            received = self.transport.recv(_INBOUND_SLICE)
            self._step_inbound(received)
            if len(received) < _INBOUND_SLICE or time.monotonic() > deadline:
                return

    def _step_inbound(self, received: list[Inbound]) -> None:
        for identity, msg in received:
            if isinstance(msg, ClientRequest):
                self._on_client_request(identity, msg)
                continue
            if isinstance(msg, HeartbeatResponse):
                sent = self._hb_sent.pop(msg.frm, None)
                if sent is not None:  # ours to a peer: a stranger's keys cannot pile up
                    self._hb_answered[msg.frm] = time.monotonic()
                    self.events.emit("heartbeat", msg.frm, (time.monotonic() - sent) * 1000)
            elif isinstance(msg, Heartbeat):
                self._note_leader_contact()
            if not self._may_speak(msg.frm):
                self._dropped_non_member += 1
                if _worth_logging(self._dropped_non_member):
                    self.log.warning(
                        "bad_message_dropped",
                        reason="not_a_member",
                        sender=msg.frm,
                        count=self._dropped_non_member,
                    )
                continue
            self.core.step(msg)

    def _may_speak(self, node_id: str) -> bool:
        """Raft messages count only from members: the latest membership, the committed one
        (a leader that removed itself still delivers that commit), or peers we joined via.
        Without CURVE this is what keeps a stranger's forged term or entries out."""
        return (
            node_id in self.core.membership.voters
            or node_id in self.core.membership.learners
            or node_id in self._applied_membership.voters
            or node_id in self._applied_membership.learners
            or node_id in self._join_peers
        )

    def _log_snapshot_progress(self, msg: InstallSnapshot) -> None:
        """Leader side of a snapshot transfer: start, every ~64 MiB, and the last chunk."""
        key = (msg.to, msg.meta.index)
        if msg.offset == 0 and key not in self._snap_sending:
            for stale in [k for k in self._snap_sending if k[0] == msg.to]:
                del self._snap_sending[stale]  # an earlier transfer to it was abandoned
            self._snap_sending[key] = time.monotonic()
            self.log.info(
                "snapshot_send_started", to=msg.to, index=msg.meta.index, size=msg.meta.size
            )
        sent = msg.offset + len(msg.data)
        if msg.done:
            started = self._snap_sending.pop(key, time.monotonic())
            self.log.info(
                "snapshot_sent",
                to=msg.to,
                index=msg.meta.index,
                size=msg.meta.size,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
        elif sent // (64 << 20) != msg.offset // (64 << 20):
            self.log.info(
                "snapshot_send_progress",
                to=msg.to,
                index=msg.meta.index,
                sent_bytes=sent,
                size=msg.meta.size,
            )

    def _note_leader_contact(self) -> None:
        now = time.monotonic()
        gap_ms = (now - self._last_leader_contact) * 1000
        threshold_ms = 0.8 * self.config.election_ticks * self.config.tick_ms
        if gap_ms > threshold_ms and self.core.role == Role.FOLLOWER:
            self.events.emit("election_timeout_threshold", gap_ms, threshold_ms)
        self._last_leader_contact = now

    def _on_client_request(self, identity: bytes, req: ClientRequest) -> None:
        def deliver(outcome: Outcome) -> None:
            self.transport.queue_reply(identity, outcome.to_reply(req.req_id))

        arrived = time.monotonic()
        deadline = arrived + min(req.timeout_ms, 600_000) / 1000
        kind = req.kind
        if kind == "apply":
            try:
                data = codec.encode_command(req.client_id, req.seq, req.name, req.args)
            except (TypeError, ValueError, codec.DecodeError) as exc:
                deliver(Outcome(False, error="bad_request", message=str(exc)))
                return

            def deliver_timed(outcome: Outcome) -> None:
                self._command_us.observe(int((time.monotonic() - arrived) * 1e6))
                deliver(outcome)

            cmd = (req.client_id, req.seq, req.name, req.args)
            self._enqueue_proposal(data, deliver_timed, deadline, cmd)
        elif kind == "query":
            consistency = req.consistency
            if consistency not in ("linearizable", "lease", "local"):
                deliver(Outcome(False, error="bad_request", message="unknown consistency"))
                return
            self._enqueue_read(_Read(req.name, req.args, deliver, deadline), consistency)
        elif kind == "status":
            deliver(Outcome(True, self._status_for_clients()))
        elif kind == "members":  # the leader's view: a removed node's would be stale
            deliver(
                Outcome(True, self._members())
                if self.core.role == Role.LEADER
                else self._not_leader()
            )
        elif kind == "add_member" and len(req.args) >= 2:
            self._do_add_member(
                str(req.args[0]),
                str(req.args[1]),
                bool(req.args[2]) if len(req.args) > 2 else True,
                deliver,
            )
        elif kind == "remove_member" and len(req.args) == 1:
            self._do_remove_member(str(req.args[0]), deliver)
        elif kind == "transfer":
            self._do_transfer(str(req.args[0]) if req.args and req.args[0] else None, deliver)
        elif kind == "snapshot":
            self._do_manual_snapshot(deliver)
        else:
            deliver(Outcome(False, error="bad_request", message=f"unknown request kind {kind!r}"))

    # ------------------------------------------------------------------ proposals and reads

    def _not_leader(self) -> Outcome:
        leader = self.core.leader
        address = self.core.membership.address(leader) or "" if leader else ""
        return Outcome(
            False,
            error="not_leader",
            message=f"{self.config.node_id} is not the leader",
            leader=leader,
            address=address,
        )

    def _enqueue_proposal(
        self, data: bytes, deliver: Deliver, deadline: float, cmd: Command | None = None
    ) -> None:
        if self._closing:
            deliver(Outcome(False, error="stopped", message="node stopped"))
        elif self._storage_error:
            deliver(Outcome(False, error="storage_failed", message=self._storage_error))
        elif self.core.role != Role.LEADER:
            deliver(self._not_leader())
        elif len(data) > self._max_entry_bytes:
            # it could never be stored, or reach a follower (the frame would exceed
            # max_frame_bytes): accepted, it would block every later entry behind it
            message = (
                f"command of {len(data)} bytes exceeds {self._max_entry_bytes}, the most one"
                f" log record or AppendEntries frame holds"
                f" (max_frame_bytes={self.config.max_frame_bytes})"
            )
            deliver(Outcome(False, error="bad_request", message=message))
        elif len(self._pending) + len(self._proposals) >= self.config.max_pending:
            deliver(
                Outcome(False, error="busy", message="too many commands in flight; retry later")
            )
        else:
            self._proposals.append((data, deliver, deadline, cmd))

    def _flush_proposals(self) -> None:
        """Propose at most the turn's budget (see :mod:`zraft.budget`); the rest wait.

        A turn's work must stay bounded: appends and heartbeats go out once per turn,
        and a leader that took 8192 commands in one turn (persist, encode, apply) ran
        turns of 600 ms on a slow host, long enough for its followers to elect another.
        """
        if not self._proposals:
            return
        size = self._budget.size
        batch = self._proposals[:size]
        del self._proposals[:size]
        self._turn_proposed = len(batch)
        try:
            term, first = self.core.propose([data for data, _, _, _ in batch])
        except core_raft.NotLeader:
            refused = self._not_leader()
        except core_raft.ProposalDropped as exc:
            refused = Outcome(False, error="busy", message=str(exc) or "proposal dropped")
        else:
            for index, (_, deliver, deadline, cmd) in enumerate(batch, first):
                self._track(index, _Pending(term, deliver, deadline, cmd))
            return
        for _, deliver, _, _ in batch:
            deliver(refused)

    def _track(self, index: int, pending: _Pending) -> None:
        """Remember who waits for ``index``; an older waiter there was overwritten for sure."""
        displaced = self._pending.get(index)
        if displaced is not None:
            displaced.deliver(
                Outcome(False, error="not_leader", message="entry replaced by a newer leader")
            )
        self._pending[index] = pending

    def _enqueue_read(self, read: _Read, consistency: str) -> None:
        if self._closing:
            read.deliver(Outcome(False, error="stopped", message="node stopped"))
        elif self.sm.query_handler(read.name) is None:
            read.deliver(
                Outcome(False, error="no_such_command", message=f"no query named {read.name!r}")
            )
        elif consistency == "local":
            self._serve_reads([read])
        elif self.core.role != Role.LEADER:
            read.deliver(self._not_leader())
        else:
            read.lease = consistency == "lease"
            self._reads_new.append(read)

    def _flush_reads(self) -> None:
        """One ReadIndex request per batch of reads (and per consistency level)."""
        if not self._reads_new:
            return
        reads, self._reads_new = self._reads_new, []
        for lease in (False, True):
            batch = [r for r in reads if r.lease is lease]
            if not batch:
                continue
            ctx = struct.pack(">Q", next(self._read_ctx))
            try:
                self.core.read_index(ctx, lease=lease)
            except core_raft.NotLeader:
                out = self._not_leader()
            except core_raft.ProposalDropped as exc:
                out = Outcome(False, error="busy", message=f"reads refused: {exc}")
            else:
                self._reads_by_ctx[ctx] = batch
                continue
            for r in batch:
                r.deliver(out)

    def _serve_reads(self, reads: Iterable[_Read]) -> None:
        for r in reads:
            handler = self.sm.query_handler(r.name)
            if handler is None:
                r.deliver(Outcome(False, error="no_such_command", message=f"no query {r.name!r}"))
                continue
            try:
                r.deliver(Outcome(True, handler(*r.args)))
            except KeyboardInterrupt:  # the operator's Ctrl-C, not the handler's doing
                raise
            except BaseException as exc:  # the user's handler failed: their error, not ours
                r.deliver(Outcome(False, error="app_error", message=f"{type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ Ready handling

    def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader, rd.soft_state.term)
        # A leader's messages (appends, heartbeats, snapshots) depend on nothing it has
        # yet to write unless its term/vote changed: send them first, so followers
        # write in parallel with its own fsync (dissertation 10.2.1; the core counts
        # the leader's copy only after advance). Everyone else persists first.
        early = self._soft[0] is Role.LEADER and rd.hard_state is None and rd.snapshot is None
        t0 = time.monotonic()
        if early:
            self._send_all(rd.messages)
            # What a leader commits it has already written (it counts its own copy only
            # after advance), so it applies and answers before this batch's fsync.
            if rd.committed_entries:
                assert not rd.entries or rd.committed_entries[-1].index < rd.entries[0].index
                self._apply_entries(rd.committed_entries)
                self.transport.flush_replies()
        t1 = time.monotonic()
        lazy = early and self.config.async_leader_flush
        if not self._persist(rd, wait=not lazy):
            return
        t2 = time.monotonic()
        if not early:
            self._send_all(rd.messages)
            if rd.committed_entries:
                self._apply_entries(rd.committed_entries)
        self._turn_persist_s += t2 - t1
        self._turn_apply_s += (t1 - t0) + (time.monotonic() - t2)
        for rs in rd.read_states:
            reads = self._reads_by_ctx.pop(rs.ctx, None)
            if reads:
                self._reads_waiting.append((rs.index, reads))
        self.core.advance(rd, synced=not (lazy and rd.entries))
        if self._join_marker:
            self._end_join_if_caught_up()
        if self.core.membership is not self._peers_for:
            self._peers_for = self.core.membership  # appended, truncated or from a snapshot
            self.transport.set_peers(self._routes())
        while self._reads_waiting and self._reads_waiting[0][0] <= self._applied:
            self._serve_reads(self._reads_waiting.popleft()[1])

    def _send_all(self, messages: list[Message]) -> None:
        # followers in step get the same entries: pack them once (the same index range
        # holds the same entries within one Ready)
        packed: dict[tuple[int, int, int], bytes] = {}
        for msg in messages:
            if isinstance(msg, AppendEntries) and msg.entries and len(messages) > 1:
                span = (msg.entries[0].index, msg.entries[-1].index, msg.entries[-1].term)
                blob = packed.get(span)
                if blob is None:
                    blob = packed[span] = codec.pack_entries(msg.entries)
                self.transport.send(msg, blob)
                continue
            if isinstance(msg, Heartbeat):
                self._hb_sent.setdefault(msg.to, time.monotonic())
            elif isinstance(msg, InstallSnapshot):
                self._log_snapshot_progress(msg)
            self.transport.send(msg)

    def _persist(self, rd: Ready, wait: bool) -> bool:
        """Make the Ready's state durable. On a disk failure, stop accepting writes (loudly).

        Without ``wait`` (a leader's own entries), the flush runs on the storage's helper
        thread and the core hears of it in :meth:`_check_log_synced`. Anything else waits
        for every earlier flush too: a node must never answer for entries it has only
        written (say, a deposed leader acknowledging the new leader's appends).
        """
        try:
            if rd.hard_state is not None:
                if rd.hard_state.vote and rd.hard_state.vote != self._vote:
                    self.log.info(
                        "vote_cast", term=rd.hard_state.term, candidate=rd.hard_state.vote
                    )
                self._vote = rd.hard_state.vote
                self.storage.set_hard_state(rd.hard_state)
            if rd.entries:
                self.storage.append(rd.entries)
                self._append_batch.observe(len(rd.entries))
            if not wait:
                if rd.entries:
                    self.storage.sync_begin(self._wake_reactor)
                    self._log_syncing = True
            elif rd.entries or self._log_syncing:
                self.storage.sync()
                self._log_syncing = False
            if rd.entries:
                config = EntryType.CONFIG  # a local: enum member lookups are slow in 3.11
                for e in rd.entries:
                    if e.type == config:
                        self._on_config_appended(Membership.decode(e.data), e.index)
            for chunk in rd.snapshot_chunks:
                self.storage.stage_snapshot_chunk(chunk.meta, chunk.offset, chunk.data)
                if chunk.done:
                    self._verify_staged_snapshot(chunk.meta)
            if rd.snapshot is not None:
                self.storage.restart_log_after(rd.snapshot)
                self._install_snapshot(rd.snapshot)
        except (StorageFailed, OSError) as exc:
            self._storage_error = f"storage failed: {exc}"
            self.log.error("storage_failed", error=str(exc))
            self._request_stop()
            return False
        return True

    def _check_log_synced(self) -> None:
        """Tell the core how far a leader's own log is durable (see _persist)."""
        try:
            pending = self.storage.sync_pending()
            index = self.storage.synced_index()
        except StorageFailed as exc:
            self._storage_error = f"storage failed: {exc}"
            self.log.error("storage_failed", error=str(exc))
            self._log_syncing = False
            self._request_stop()
            return
        self._log_syncing = pending
        self.core.log_synced(index)

    def _on_soft_state(self, role: Role, leader: str, term: int) -> None:
        prev_role, prev_leader, prev_term = self._soft
        self._soft = (role, leader, term)
        self.log = self.log.bind(term=term, role=role.value)
        if term != prev_term:
            self.log.info("term_change", term=term, prev_term=prev_term)
            self.events.emit("term_change", term, prev_term)
        if role != prev_role:
            if role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
                self.log.info("election_started", term=term, pre_vote=role == Role.PRE_CANDIDATE)
            self.log.info("role_change", role=role.value, prev_role=prev_role.value)
            self.events.emit("state_change", role.value, prev_role.value)
            if prev_role == Role.LEADER:
                self._fail_reads_on_step_down()
                self._answer_transfers()
        if leader != prev_leader:
            if leader:
                self._leader_known.set()
            else:
                self._leader_known.clear()
            self.log.info("leader_change", leader=leader, prev_leader=prev_leader)
            self.events.emit("leader_change", leader, prev_leader)
            self._last_leader_contact = time.monotonic()

    def _fail_reads_on_step_down(self) -> None:
        out = self._not_leader()
        for reads in [
            self._reads_new,
            *self._reads_by_ctx.values(),
            *(r for _, r in self._reads_waiting),
        ]:
            for r in reads:
                r.deliver(out)
        self._reads_new, self._reads_by_ctx = [], {}
        self._reads_waiting.clear()

    def _on_config_appended(self, membership: Membership, index: int) -> None:
        self.transport.set_peers(self._routes())  # before this Ready's messages go out
        self.log.info(
            "membership_change",
            voters=sorted(membership.voters),
            learners=sorted(membership.learners),
            index=index,
        )

    # ------------------------------------------------------------------ applying committed entries

    def _apply_entries(self, entries: list[Entry]) -> None:
        normal = EntryType.NORMAL  # a local: an enum member lookup costs ~0.2 us in 3.11
        for e in entries:
            if e.index <= self._applied:
                continue  # already reflected by a restored snapshot
            assert e.index == self._applied + 1, f"apply gap: {self._applied} -> {e.index}"
            pending = self._pending.pop(e.index, None)
            outcome = _NO_RESULT
            if e.type == normal:
                # same index and term: the very entry we proposed (Log Matching, §5.3)
                cmd = pending.cmd if pending is not None and pending.term == e.term else None
                outcome = self._apply_command(e, cmd)
            elif e.type == EntryType.CONFIG:
                self._apply_config(Membership.decode(e.data))
            else:
                self._apply_noop(e)
            self._applied, self._applied_term = e.index, e.term
            if pending is not None:
                if pending.term != e.term:
                    pending.deliver(
                        Outcome(
                            False,
                            error="not_leader",
                            message="leadership changed; command was not committed",
                        )
                    )
                elif isinstance(outcome, Outcome):
                    pending.deliver(outcome)
                else:  # a membership change answers with its index (see _do_add_member)
                    index = e.index if e.type == EntryType.CONFIG else None
                    pending.deliver(Outcome(True, index))
        if entries:
            self.events.emit("commit", self._applied, None)
            self._maybe_snapshot()

    def _apply_command(self, e: Entry, cmd: Command | None = None) -> Outcome:
        """Apply a NORMAL entry. ``cmd``: its decoded form when this node proposed it
        (trusted: a client request as decoded off the wire, or an embedded call with
        flat arguments; the entry's bytes decode to the very same values)."""
        if cmd is not None and len(e.data) <= codec.DEFAULT_MAX_BYTES:  # as followers decode
            client_id, seq, name, args = cmd
        else:
            try:
                client_id, seq, name, args = codec.decode_command(e.data)
            except codec.DecodeError as exc:
                self.log.error("bad_entry_skipped", index=e.index, reason=str(exc))
                return Outcome(False, error="bad_request", message=str(exc))
        digest: int | None = None
        if client_id and seq:
            digest = zlib.crc32(e.data)  # a retry's bytes are the same: so is its digest
            remembered = self._sessions.begin(client_id, seq, digest)
            if remembered is not None:
                return _remembered_outcome(remembered, seq)
        handler = self.sm.command_handler(name)
        if handler is None:
            out = Outcome(False, error="no_such_command", message=f"no command named {name!r}")
        else:
            try:
                out = Outcome(True, handler(*args))
            except KeyboardInterrupt:  # a Ctrl-C on this node alone: replayed at restart
                raise
            # BaseException too (a CancelledError, a SystemExit): the same on every node,
            # and a committed entry that killed the reactor would kill it at each restart
            except BaseException as exc:  # the handler's error goes back to the caller
                out = Outcome(False, error="app_error", message=f"{type(exc).__name__}: {exc}")
        if client_id and seq:
            out = _wire_safe(out)  # a remote caller's result must survive msgpack and snapshots
            self._sessions.record(
                client_id, seq, (out.ok, out.result, out.error, out.message), digest
            )
        return out

    def _apply_noop(self, e: Entry) -> None:
        """A leader's no-op carries its session limits: every node adopts them here."""
        if not e.data:
            return  # written before limits travelled in the log
        try:
            limits = SessionLimits.decode(e.data)
        except codec.DecodeError as exc:
            self.log.error("bad_entry_skipped", index=e.index, reason=str(exc))
            return
        if limits != self._sessions.limits:
            self.log.info(  # the leader's limits win; ours count only when we lead
                "session_limits",
                index=e.index,
                session_window=limits.window,
                max_sessions=limits.max_sessions,
                configured_session_window=self._own_limits.window,
                configured_max_sessions=self._own_limits.max_sessions,
            )
            self._sessions.set_limits(limits)

    def _apply_config(self, membership: Membership) -> None:
        prev = self._applied_membership
        self._applied_membership = membership
        self.transport.set_peers(self._routes())  # a member removed by this commit may go
        for nid in membership.ids() - prev.ids():
            self.events.emit("add_peer", nid, membership.address(nid))
            self.log.info("member_added", member=nid, voter=nid in membership.voters)
        for nid in prev.ids() - membership.ids():
            self.events.emit("remove_peer", nid, prev.address(nid))
            self.log.info("member_removed", member=nid)
        for nid in membership.voters.keys() & prev.learners.keys():
            self.log.info("learner_promoted", member=nid)
            self.events.emit("learner_promoted", nid, None)

    # ------------------------------------------------------------------ snapshots

    def _snapshot_blob(self) -> bytes:
        packed = self._sessions.pack()
        return struct.pack(">Q", len(packed)) + packed

    def _load_snapshot(self, meta: SnapshotMeta) -> None:
        """Stream a snapshot into the state machine: sessions header first, then user chunks."""
        chunks = self.storage.read_snapshot(meta, chunk_bytes=self.config.snapshot_chunk_bytes)
        buf = b""
        for chunk in chunks:
            buf += chunk
            if len(buf) >= 8 and len(buf) >= 8 + struct.unpack_from(">Q", buf)[0]:
                break
        (n,) = struct.unpack_from(">Q", buf)
        self._sessions.restore(buf[8 : 8 + n])
        rest = buf[8 + n :]

        def user_chunks() -> Iterator[bytes]:
            if rest:
                yield rest
            yield from chunks

        self.sm.restore_chunks(user_chunks())
        self._applied, self._applied_term = meta.index, meta.term
        self._applied_membership = meta.membership
        self._last_snapshot_index = meta.index

    def _restore_from_snapshot(self) -> None:
        meta = self.storage.snapshot_meta()
        if meta is None:
            # nothing applied yet: the membership in force at index 0 is the bootstrap one
            self._applied_membership = self.storage.bootstrap_membership()
            return
        started = time.monotonic()
        self._load_snapshot(meta)
        self.log.info(
            "snapshot_restored",
            index=meta.index,
            size=meta.size,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _log_holds(self, index: int, term: int) -> bool:
        try:
            return self.storage.term(index) == term
        except (Compacted, Unavailable):
            return False

    def _verify_staged_snapshot(self, meta: SnapshotMeta) -> None:
        """All chunks are staged: check them before the core may use the snapshot.

        If our log already holds the snapshot's last entry the core just commits up
        to it (never wiping acknowledged entries), so the staged copy is not needed.
        """
        if self._log_holds(meta.index, meta.term):
            return
        if not self.storage.finish_staged_snapshot(meta):
            self._snapshots_rejected += 1  # a bad copy may come again and again
            if _worth_logging(self._snapshots_rejected):
                self.log.warning(
                    "snapshot_rejected",
                    index=meta.index,
                    reason="checksum mismatch",
                    count=self._snapshots_rejected,
                )
            self.core.snapshot_failed(meta)

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """The core adopted a verified, durable snapshot: load it into the state machine."""
        started = time.monotonic()
        self._load_snapshot(meta)
        for index in [i for i in self._pending if i <= meta.index]:
            self._pending.pop(index).deliver(
                Outcome(False, error="unknown_outcome", message="replaced by a snapshot")
            )
        self.transport.set_peers(self._routes())
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        self.log.info(
            "snapshot_installed", index=meta.index, size=meta.size, duration_ms=duration_ms
        )
        self.events.emit("snapshot_installed", meta.index, meta.size)

    def _maybe_snapshot(self) -> None:
        every = self.config.snapshot_entries
        since = max(self._last_snapshot_index, self._snapshot_retry_from)
        due = self._applied - since
        if every and due >= every + self._snapshot_jitter:
            if due < SNAPSHOT_DEFER_LIMIT * every and self._sending_snapshot():
                return  # a follower is fetching one: newer ones would push it out of keep
            self._start_snapshot(None)
            # Nodes apply the same entries at about the same time: with one fixed
            # interval they would all snapshot (and compete for CPU and disk) at once,
            # stalling every request in flight. Each node waits a random extra share.
            self._snapshot_jitter = self._rng.randrange(every // 4 + 1)

    def _sending_snapshot(self) -> bool:
        if self.core.role != Role.LEADER:
            return False
        progress = self.core.status().progress.values()
        return any(p.state is ProgressState.SNAPSHOT for p in progress)

    def _do_manual_snapshot(self, deliver: Deliver) -> None:
        if self._applied == 0:
            deliver(Outcome(False, error="bad_request", message="nothing applied yet"))
        elif self._applied == self._last_snapshot_index:
            deliver(Outcome(True, self._applied))
        else:
            self._start_snapshot(deliver)

    def _start_snapshot(self, deliver: Deliver | None) -> None:
        """Capture state on the reactor; write and fsync it on a helper thread."""
        if not self.sm.supports_snapshots():
            if deliver is not None:
                message = "the state machine does not implement snapshot()"
                deliver(Outcome(False, error="bad_request", message=message))  # retry won't help
            return
        if self._snapshot_thread is not None:  # a caller waits for it, and maybe one more
            if deliver is not None:
                self._snapshot_waiters.append((self._applied, deliver))
            return
        index, term, membership = self._applied, self._applied_term, self._applied_membership
        started = time.monotonic()
        try:
            state = self.sm.snapshot()
            head = self._snapshot_blob()
        except Exception as exc:  # the user's snapshot() failed: no snapshot, node goes on
            self.log.error("snapshot_failed", error=f"{type(exc).__name__}: {exc}")
            self._snapshot_retry_from = self._applied  # retry after the next N entries
            if deliver is not None:
                deliver(Outcome(False, error="app_error", message=f"snapshot() failed: {exc}"))
            return
        chunks: Iterable[bytes] = [state] if isinstance(state, bytes | bytearray) else state
        if deliver is not None:  # answered with the waiters, or told "stopped" with them
            self._snapshot_waiters.append((index, deliver))

        def stream() -> Iterator[bytes]:
            yield head
            yield from chunks

        def write() -> None:
            structlog.contextvars.bind_contextvars(node=self.config.node_id)
            try:
                meta = self.storage.write_snapshot(index, term, membership, stream())
                self._post(lambda: self._snapshot_written(meta, started, None))
            except Exception as exc:
                err = exc
                self._post(lambda: self._snapshot_written(None, started, err))

        self._snapshot_thread = threading.Thread(target=write, name="zraft-snapshot", daemon=True)
        self._snapshot_thread.start()

    def _snapshot_written(
        self, meta: SnapshotMeta | None, started: float, err: Exception | None
    ) -> None:
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
        self._snapshot_thread = None
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        if meta is None:
            self.log.error("snapshot_failed", error=str(err))
            self._snapshot_retry_from = self._applied  # not again at once: after N entries
            failed = Outcome(False, error="storage_failed", message=f"snapshot failed: {err}")
            for _, d in waiters:
                d(failed)
            return
        self._last_snapshot_index = meta.index
        keep_from = max(0, meta.index - self.config.snapshot_trailing)
        if keep_from > 0 and not self._closing:
            self.storage.compact(keep_from)
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        self.log.info("snapshot_taken", index=meta.index, size=meta.size, duration_ms=duration_ms)
        self.events.emit("snapshot_taken", meta.index, meta.size)
        self._answer_snapshot_waiters(meta.index, waiters)

    def _answer_snapshot_waiters(self, index: int, waiters: list[tuple[int, Deliver]]) -> None:
        """A snapshot covering what a caller had applied answers it; the rest get a new one."""
        later = [d for applied, d in waiters if applied > index]
        for applied, d in waiters:
            if applied <= index:
                d(Outcome(True, index))
        if not later:
            return
        if self._closing:
            for d in later:
                d(Outcome(False, error="stopped", message="node stopped"))
            return

        def answer_all(outcome: Outcome) -> None:
            for d in later:
                d(outcome)

        self._start_snapshot(answer_all)

    # ------------------------------------------------------------------ membership

    def _members(self) -> dict[str, Any]:
        m = self.core.membership
        return {
            "voters": dict(m.voters),
            "learners": dict(m.learners),
            "promoting": list(m.promote),
            "leader": self.core.leader,
        }

    def _propose_membership(self, new: Membership, deliver: Deliver) -> bool:
        if self._closing or self.core.role != Role.LEADER:
            deliver(self._not_leader())
            return False
        problem = _membership_problem(new)
        if problem:  # an entry no follower could decode would block every entry after it
            deliver(Outcome(False, error="bad_request", message=problem))
            return False
        try:
            term, index = self.core.propose_membership(new)
        except core_raft.NotLeader:
            deliver(self._not_leader())
            return False
        except core_raft.ChangeInProgress:
            deliver(
                Outcome(
                    False,
                    error="change_in_progress",
                    message="another membership change is in flight; retry",
                )
            )
            return False
        except core_raft.ProposalDropped as exc:
            deliver(Outcome(False, error="busy", message=f"membership change refused: {exc}"))
            return False
        except ValueError as exc:
            deliver(Outcome(False, error="bad_request", message=str(exc)))
            return False
        self._track(index, _Pending(term, deliver, self._deadline(None)))
        return True

    def _do_add_member(self, node_id: str, address: str, voter: bool, deliver: Deliver) -> None:
        if not ID_RE.match(node_id) or not ADDR_RE.match(address):
            deliver(
                Outcome(
                    False,
                    error="bad_request",
                    message=f"add_member needs an id of [A-Za-z0-9_.-]{{1,64}} and an address "
                    f"like tcp://host:port, got {node_id!r} {address!r}",
                )
            )
            return
        if self.core.role != Role.LEADER:  # a follower's view may be stale: never answer ok
            deliver(self._not_leader())
            return
        m = self.core.membership
        known_at = m.address(node_id)
        if known_at and known_at != address:  # "already a member" would hide the move
            message = (
                f"{node_id} is a member at {known_at}; to move it, remove it, then add it"
                f" at {address}"
            )
            deliver(Outcome(False, error="bad_request", message=message))
            return
        if node_id in m.voters or (node_id in m.learners and (not voter or node_id in m.promote)):
            # already there: idempotent for retries and --join; the answer is an index at
            # or after the entry that added it, and at or after everything applied now:
            # what a joining node waits to apply before it votes. A member whose data dir
            # was wiped and that joins without being removed first may have acknowledged
            # entries, or voted, in its lost life; the bootstrap members' own entry is no
            # entry at all (index 0), and waiting for it let such a node vote at once.
            self._answer_when_config_applied(deliver, at_least=self._applied)
            return
        holder = next((k for k in m.ids() if k != node_id and m.address(k) == address), None)
        if holder is not None:  # two ids at one address: each would get the other's traffic
            deliver(
                Outcome(
                    False,
                    error="bad_request",
                    message=f"{address} already belongs to member {holder}; remove it first",
                )
            )
            return
        if voter:  # it must hold everything we have now before it may vote
            self._promote[node_id] = self.core.last_index + 1
        # a voter-to-be joins as a learner marked for promotion: the mark is part of the
        # configuration, so a leader elected before it catches up still promotes it
        learners = {**m.learners, node_id: m.learners.get(node_id, address)}
        promote = set(m.promote) | ({node_id} if voter else set())
        self._propose_membership(m.with_changes(learners=learners, promote=promote), deliver)

    def _do_remove_member(self, node_id: str, deliver: Deliver) -> None:
        if self.core.role != Role.LEADER:  # a follower's view may be stale: never answer ok
            deliver(self._not_leader())
            return
        m = self.core.membership
        if node_id not in m.ids():
            self._answer_when_config_applied(deliver, result_index=False)
            return
        voters = {k: v for k, v in m.voters.items() if k != node_id}
        if not voters:
            deliver(Outcome(False, error="bad_request", message="cannot remove the last voter"))
            return
        learners = {k: v for k, v in m.learners.items() if k != node_id}
        self._promote.pop(node_id, None)
        self._propose_membership(m.with_changes(voters=voters, learners=learners), deliver)

    def _answer_when_config_applied(
        self, deliver: Deliver, result_index: bool = True, at_least: int = 0
    ) -> None:
        """A change already made answers once the configuration that made it is applied.

        The leader's configuration may still be uncommitted (a retry of the very call
        that proposed it, say): an answer now would promise a change a new leader may
        never see. So the caller waits with whoever proposed that entry, if anyone.
        The answer is that entry's index (``at_least``, if higher).
        """
        index = self.core.config_index
        result = max(index, at_least) if result_index else None
        if index <= self._applied:
            deliver(Outcome(True, result))
            return
        term = self.core.log.term(index)
        assert term is not None, "the leader's configuration entry is in its log"
        first = self._pending.get(index)
        if first is not None and first.term != term:  # it waited for an overwritten entry
            first.deliver(
                Outcome(False, error="not_leader", message="entry replaced by a newer leader")
            )
            first = None

        def both(out: Outcome) -> None:
            if first is not None:
                first.deliver(out)
            deliver(Outcome(True, result) if out.ok else out)

        deadline = first.deadline if first is not None else self._deadline(None)
        self._pending[index] = _Pending(term, both, deadline)

    def _maybe_promote(self, now: float) -> None:
        """Promote learners the configuration marks for it once they have caught up."""
        m = self.core.membership
        if self.core.role != Role.LEADER or not (m.promote or self._promote):
            self._commits.clear()
            return
        self._commits.add(now, self.core.commit)
        for node_id in set(self._promote) - set(m.promote):
            self._promote.pop(node_id)  # promoted, removed, or never marked
        status = self.core.status()
        for node_id in m.promote:
            # a leader that did not add it asks it to hold everything this leader has
            self._promote.setdefault(node_id, self.core.last_index)
            progress = status.progress.get(node_id)
            if (
                progress is None
                or progress.match < self._promote[node_id]
                or not self._commits.caught_up(progress.match, status.commit, now)
            ):
                continue
            voters = {**m.voters, node_id: m.learners[node_id]}
            learners = {k: v for k, v in m.learners.items() if k != node_id}

            def done(outcome: Outcome, nid: str = node_id) -> None:
                if outcome.ok:
                    self._promote.pop(nid, None)

            self._propose_membership(m.with_changes(voters=voters, learners=learners), done)
            return

    def _do_transfer(self, to: str | None, deliver: Deliver) -> None:
        """Start handing leadership over; ``deliver`` hears once it left this node (the
        target's id) or when the transfer gave up after an election timeout."""
        if self._closing:
            deliver(Outcome(False, error="stopped", message="node stopped"))
            return
        if self.core.role != Role.LEADER:
            deliver(self._not_leader())
            return
        if to is None:  # a retried call keeps the target its first attempt chose
            to = self.core.transferee or self._transfer_target()
            if to is None and not set(self.core.membership.voters) - {self.config.node_id}:
                message = "no other voter to hand leadership to"
                deliver(Outcome(False, error="bad_request", message=message))
                return
            if to is None:  # a new leader has heard no heartbeat answer yet: wait for one
                deadline = time.monotonic() + self._election_timeout_s()
                self._transfer_picks.append((deadline, deliver))
                return
        if to == self.config.node_id:
            deliver(Outcome(True, to))  # it leads already
            return
        try:
            self.core.transfer_leader(to)
        except (ValueError, core_raft.NotLeader) as exc:
            deliver(Outcome(False, error="bad_request", message=str(exc)))
            return
        self.log.info("leader_transfer", target=to)
        self._transfers.append((to, deliver))
        if self.core.role != Role.LEADER:  # TimeoutNow went out and was answered already
            self._answer_transfers()

    def _election_timeout_s(self) -> float:
        return self.config.tick_ms * self.config.election_ticks / 1000

    def _retry_transfer_picks(self, now: float) -> None:
        """Start the target-less transfers that now have a voter to pick; fail those that
        waited an election timeout for one."""
        picks, self._transfer_picks = self._transfer_picks, []
        for deadline, deliver in picks:
            if self.core.role != Role.LEADER:
                deliver(self._not_leader())
            elif self.core.transferee or self._transfer_target():
                self._do_transfer(None, deliver)
            elif now >= deadline:
                message = "no other voter has answered a heartbeat within an election timeout"
                deliver(Outcome(False, error="bad_request", message=message))
            else:
                self._transfer_picks.append((deadline, deliver))

    def _transfer_target(self) -> str | None:
        """The most caught-up voter among those that answered heartbeats lately: the most
        caught-up of all may be one that just died, its match frozen at the others'."""
        now, status = time.monotonic(), self.core.status()
        recent_s = self._election_timeout_s()
        live = [
            (p.match, nid)
            for nid, p in status.progress.items()
            if nid != self.config.node_id
            and nid in self.core.membership.voters
            and now - self._hb_answered.get(nid, -1e9) <= recent_s
        ]
        return max(live)[1] if live else None

    def _answer_transfers(self) -> None:
        """Answer transfer callers: done once this node no longer leads; failed if it
        still does but the core gave the transfer up (its target did not catch up or
        answer within an election timeout)."""
        if not self._transfers:
            return
        leading = self.core.role == Role.LEADER
        waiting = []
        for to, deliver in self._transfers:
            if not leading and self.core.leader in (NONE, to):
                deliver(Outcome(True, to))
            elif not leading:
                message = f"leadership went to {self.core.leader}, not {to}"
                deliver(Outcome(False, error="bad_request", message=message))
            elif self.core.transferee != to:
                message = (
                    f"leadership transfer to {to} gave up after an election timeout (is it"
                    f" up and reachable?); {self.config.node_id} still leads"
                )
                deliver(Outcome(False, error="bad_request", message=message))
            else:
                waiting.append((to, deliver))
        self._transfers = waiting

    def _start_join_thread(self, endpoint: str) -> None:
        """Ask a running cluster to add this node (as a learner that gets promoted)."""
        from zraft.client import Client

        def join() -> None:
            """Ask until this node is a voter: a leader change can forget a pending promotion."""
            deadline = time.monotonic() + 600
            asked_at = 0.0
            while time.monotonic() < deadline and not self._stopped.wait(0.5):
                st = self._last_status
                if self.config.node_id in st.get("voters", ()) and not st.get("joining"):
                    self.log.info("join_complete")
                    return
                if time.monotonic() - asked_at < 15:
                    continue
                try:
                    with Client(endpoint, cluster_id=self.config.cluster_id, timeout=5.0) as client:
                        index = client.add_member(
                            self.config.node_id, self.config.address, voter=True
                        )
                        members = client.members()
                    if isinstance(index, int):
                        self._post(lambda i=index: self._joined_at(i))  # type: ignore[misc]
                    peers = {**members["learners"], **members["voters"]}
                    self._post(lambda p=peers: self._learn_join_peers(p))  # type: ignore[misc]
                    asked_at = time.monotonic()
                    self.log.info("join_requested", endpoint=endpoint)
                except (ZraftError, zmq.ZMQError, ValueError) as exc:
                    self.log.warning("join_retry", endpoint=endpoint, error=str(exc))

        threading.Thread(target=join, name="zraft-join", daemon=True).start()

    def _joined_at(self, index: int) -> None:
        """The cluster added us at ``index``: vote again once we have applied it."""
        if not self.core.joining:
            return
        try:
            self.storage.set_joining(index)
        except (StorageFailed, OSError) as exc:  # keep waiting; the join thread asks again
            self.log.error("join_marker_failed", error=str(exc))
            return
        self.core.await_join(index)
        self._end_join_if_caught_up()

    def _status_for_clients(self) -> dict[str, Any]:
        """At most one fresh status a millisecond: a frame of thousands of status
        requests computed one each and held the reactor for seconds (found in review)."""
        now = time.monotonic()
        if now - self._client_status_at > 0.001:
            self._client_status, self._client_status_at = self._status(), now
        return self._client_status

    def _end_join_if_caught_up(self) -> None:
        if self._join_marker and not self.core.joining:
            self._join_marker = False
            self.storage.clear_joining()
            self._join_peers = {}  # from now on only the membership says who may speak
            self.transport.set_peers(self._routes())  # the join peers are members now
            self.log.info("join_caught_up", applied=self._applied)

    def _learn_join_peers(self, peers: dict[str, str]) -> None:
        """Let a joining node answer the leader before its log names any member."""
        self._join_peers = {k: v for k, v in peers.items() if k != self.config.node_id}
        self.transport.set_peers(self._routes())

    # ------------------------------------------------------------------ periodic work

    def _housekeeping(self, now: float) -> None:
        self._last_status = self._status()  # what status() answers while we cannot
        self._expire(now)
        self._maybe_promote(now)
        self._retry_transfer_picks(now)
        self._answer_transfers()
        self._report_lost_state()
        self._replace_damaged_snapshot()

    def _replace_damaged_snapshot(self) -> None:
        """A snapshot failed its checksum as it was sent and was set aside: write a new
        one now, or followers that need one wait for the next automatic snapshot."""
        damaged = self.storage.snapshots_set_aside()
        if damaged == self._damaged_snapshots:
            return
        self._damaged_snapshots = damaged
        self.log.error("snapshot_damaged", count=damaged, hint="set aside; writing a new one")
        self._start_snapshot(None)

    def _report_lost_state(self) -> None:
        """Say loudly what the core only counts: a follower's log went back below what it
        had acknowledged (logged when it first happens, then at powers of two)."""
        lost = self.core.lost_reports
        if lost != self._lost_logged and _worth_logging(lost):
            self.log.error(
                "follower_lost_entries",
                count=lost,
                hint="a follower's log ends below what it acknowledged: its data dir was"
                " lost or rolled back; the leader sends the entries again",
            )
        self._lost_logged = lost

    def _expire(self, now: float) -> None:
        expired = [i for i, p in self._pending.items() if p.deadline < now]
        for index in expired:
            self._pending.pop(index).deliver(
                Outcome(False, error="unknown_outcome", message="not committed in time")
            )
        if self._reads_waiting or self._reads_by_ctx:
            for ctx, reads in list(self._reads_by_ctx.items()):
                if all(r.deadline < now for r in reads):
                    del self._reads_by_ctx[ctx]
                    for r in reads:
                        r.deliver(
                            Outcome(False, error="timeout", message="read not confirmed in time")
                        )

    def _status(self) -> dict[str, Any]:
        s = self.core.status()
        snap = self.storage.snapshot_meta()
        m = s.membership
        return {
            "id": s.id,
            "role": s.role.value,
            "term": s.term,
            "leader": s.leader,
            "commit": s.commit,
            "applied": self._applied,
            "last_index": s.last_index,
            "first_index": s.first_index,
            "snapshot_index": snap.index if snap else 0,
            "voters": sorted(m.voters),
            "learners": sorted(m.learners),
            "promoting": list(m.promote),  # learners to become voters once caught up
            "joining": s.joining,  # re-provisioned: no votes until it has applied its add
            "address": self.config.address,
            "storage_error": self._storage_error,
            "pending": len(self._pending),
            # the cluster-wide limits in force (a leader's no-op set them), not our config's
            "sessions": {
                "clients": len(self._sessions),
                "session_window": self._sessions.limits.window,
                "max_sessions": self._sessions.limits.max_sessions,
            },
            "peers": {
                nid: {"match": p.match, "next": p.next, "state": str(p.state)}
                for nid, p in s.progress.items()
            },
            "metrics": self._metrics(),
        }

    def _metrics(self) -> dict[str, Any]:
        """Since start: how long log fsyncs and busy reactor turns took (a message that
        arrives mid-turn waits for the turn to end), how long clients' commands took
        here (from their request to their reply, without the network or the wait in
        the socket), entries per log append, and the turn budget (how many commands a
        turn may propose now; how often long turns shrank it)."""
        return {
            "log_fsync": self.storage.fsync_histogram().summary(1000, "ms"),
            "turn": self._turn_us.summary(1000, "ms"),
            "command": self._command_us.summary(1000, "ms"),
            "append_batch": self._append_batch.summary(),
            "turn_budget": {"size": self._budget.size, "shrinks": self._budget.shrinks},
        }


__all__ = [
    "BusyError",
    "ChangeInProgress",
    "CommandFailed",
    "NoSuchCommand",
    "Node",
    "NotLeaderError",
    "Outcome",
    "StorageFailedError",
]
