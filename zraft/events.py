"""Node events (goraft's set) delivered to listeners on their own thread.

Listeners run on a dispatcher thread, never on the reactor, so a listener may
call ``node.status()`` or even ``node.apply()`` without deadlocking the node.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

#: Event names a listener can subscribe to ("*" subscribes to all).
EVENT_NAMES = (
    "node_started",
    "node_stopped",
    "state_change",  #: value = new role, prev = old role
    "leader_change",  #: value = leader id ("" when unknown), prev = previous leader
    "term_change",
    "commit",  #: value = applied index after a batch
    "add_peer",  #: value = node id, prev = its address
    "remove_peer",
    "learner_promoted",
    "heartbeat",  #: value = peer id, prev = round-trip time in ms (leader only)
    "election_timeout_threshold",  #: value = gap since the last heartbeat (ms), prev = threshold
    "snapshot_taken",  #: value = index, prev = size in bytes
    "snapshot_installed",
)

_MAX_QUEUED = 100_000


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    value: Any
    prev: Any


class EventBus:
    """A bounded queue drained by one daemon thread; drops (and counts) when full."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[Event], None]]] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Event | None] = queue.Queue(_MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._log = structlog.get_logger("zraft.events")

    def subscribe(self, name: str, callback: Callable[[Event], None]) -> None:
        if name != "*" and name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; one of {', '.join(EVENT_NAMES)} or '*'")
        with self._lock:
            self._listeners.setdefault(name, []).append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zraft-events", daemon=True)
                self._thread.start()

    def unsubscribe(self, name: str, callback: Callable[[Event], None]) -> None:
        with self._lock:
            if callback in self._listeners.get(name, []):
                self._listeners[name].remove(callback)

    def emit(self, name: str, value: Any, prev: Any) -> None:
        assert name in EVENT_NAMES, name
        if self._thread is None or not (self._listeners.get(name) or self._listeners.get("*")):
            return
        try:
            self._queue.put_nowait(Event(name, value, prev))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                return
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            with self._lock:
                callbacks = [*self._listeners.get(event.name, []), *self._listeners.get("*", [])]
            for cb in callbacks:
                try:
                    cb(event)
                except Exception:
                    self._log.exception("event_listener_failed", event_name=event.name)
