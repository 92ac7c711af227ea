"""A concurrent key-value client workload whose history a linearizability checker judges.

Several threads, each with its own :class:`zraft.Client` (short timeouts), do
random put/get/cas/delete on a few keys and record every invocation and
completion in a :class:`HistoryRecorder`. Outcomes are classified strictly:

* a reply is ``ok=True``;
* ``NotLeaderError``/``BusyError`` are ``ok=False``: the client raises them only
  when no attempt may have been applied;
* everything else (``UnknownOutcome``, ``ReadTimeout``, any other error) is
  unknown: it may or may not have taken effect.

Every written value is unique (``c<client>-<n>``), so a lost or resurrected
write shows up as a read nobody can explain. Final linearizable reads of
every key become part of the history, so the checker also covers "no
acknowledged write was lost".
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from zraft.client import Client
from zraft.errors import BusyError, NotLeaderError, ZraftError
from zraft.testing.history import HistoryRecorder, Op

#: Ops per client per run: a bound, far above what a short run reaches.
MAX_OPS_PER_CLIENT = 200_000
#: Op mix: kind -> weight.
DEFAULT_MIX: dict[str, int] = {"get": 40, "put": 30, "cas": 20, "delete": 10}


class KVClient(Protocol):
    """What the workload needs from a client (a :class:`zraft.Client`, or a fake in tests)."""

    def apply(self, name: str, *args: Any, timeout: float | None = None) -> Any: ...

    def query(
        self, name: str, *args: Any, consistency: str = "linearizable", timeout: float | None = None
    ) -> Any: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class WorkloadConfig:
    clients: int = 4
    keys: int = 5
    op_timeout_s: float = 1.5  #: whole-call timeout of one op (retries included)
    attempt_timeout_s: float = 0.5  #: one request to one node
    think_s: float = 0.005  #: pause between one client's ops (keeps 2 cores usable)
    final_read_timeout_s: float = 30.0
    seed: int = 0
    mix: tuple[tuple[str, int], ...] = tuple(DEFAULT_MIX.items())

    def __post_init__(self) -> None:
        assert 1 <= self.clients <= 64, "1..64 clients"
        assert 1 <= self.keys <= 1000, "1..1000 keys"
        assert self.op_timeout_s > 0 and self.attempt_timeout_s > 0


def key_name(i: int) -> str:
    return f"k{i}"


class Workload:
    """Client threads against a cluster: start(), then stop(), then final_reads()."""

    def __init__(
        self,
        client_factory: Callable[[], KVClient],
        recorder: HistoryRecorder,
        config: WorkloadConfig | None = None,
    ) -> None:
        self.config = config or WorkloadConfig()
        self.recorder = recorder
        self._factory = client_factory
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()  #: "put:ok", "get:unknown", ...
        self.errors: Counter[str] = Counter()  #: exception type names seen
        self.acked: dict[str, list[Any]] = {}  #: key -> values whose write was acknowledged
        self._next_client = self.config.clients  #: fresh history ids after an unknown outcome

    @staticmethod
    def for_endpoints(
        endpoints: Sequence[str],
        cluster_id: str,
        recorder: HistoryRecorder,
        config: WorkloadConfig | None = None,
    ) -> Workload:
        cfg = config or WorkloadConfig()

        def factory() -> KVClient:
            return Client(
                list(endpoints),
                cluster_id=cluster_id,
                timeout=cfg.op_timeout_s,
                attempt_timeout=cfg.attempt_timeout_s,
            )

        return Workload(factory, recorder, cfg)

    # ------------------------------------------------------------------ run

    def start(self) -> None:
        assert not self._threads, "start once"
        for i in range(self.config.clients):
            t = threading.Thread(target=self._worker, args=(i,), name=f"workload-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop issuing ops and wait for in-flight ones (each is bounded by its timeout)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"workload threads did not stop: {stuck}"

    def _worker(self, index: int) -> None:
        rng = random.Random(self.config.seed * 1000 + index)
        client = self._factory()
        process = index  # the history's client id; a new one after each unknown outcome
        last_seen: dict[str, Any] = {}
        kinds, weights = zip(*self.config.mix, strict=True)
        try:
            for n in range(MAX_OPS_PER_CLIENT):
                if self._stop.is_set():
                    break
                kind = rng.choices(kinds, weights)[0]
                key = key_name(rng.randrange(self.config.keys))
                value = f"c{index}-{n}"
                outcome = self.run_op(client, process, kind, key, value, last_seen)
                if outcome == "unknown":
                    process = self._fresh_process()
                self._stop.wait(self.config.think_s)
        finally:
            client.close()

    def _fresh_process(self) -> int:
        with self._lock:
            self._next_client += 1
            return self._next_client

    # ------------------------------------------------------------------ one op

    def run_op(
        self,
        client: KVClient,
        process: int,
        kind: str,
        key: str,
        value: Any,
        last_seen: dict[str, Any],
    ) -> str:
        """Invoke, call, complete; returns "ok", "fail" or "unknown"."""
        arg: Any = value
        if kind == "cas":
            arg = (last_seen.get(key), value)
        elif kind in ("get", "delete"):
            arg = None
        op_id = self.recorder.invoke(process, kind, key, arg)
        try:
            result = self._call(client, kind, key, arg)
        except (NotLeaderError, BusyError) as exc:
            self.recorder.complete(op_id, False)
            return self._count(kind, "fail", exc)
        except ZraftError as exc:
            self.recorder.unknown(op_id)
            return self._count(kind, "unknown", exc)
        except Exception as exc:  # a bug in the client: unknown, counted, not fatal
            self.recorder.unknown(op_id)
            return self._count(kind, "unknown", exc)
        self.recorder.complete(op_id, True, result)
        self._observe(kind, key, arg, result, last_seen)
        return self._count(kind, "ok", None)

    @staticmethod
    def _call(client: KVClient, kind: str, key: str, arg: Any) -> Any:
        if kind == "get":
            return client.query("get", key)
        if kind == "put":
            client.apply("put", key, arg)
            return None
        if kind == "delete":
            return bool(client.apply("delete", key))
        if kind == "cas":
            return bool(client.apply("cas", key, arg[0], arg[1]))
        raise ValueError(f"unknown op kind {kind!r}")

    def _observe(self, kind: str, key: str, arg: Any, result: Any, seen: dict[str, Any]) -> None:
        """Remember what this client last saw (cas needs a plausible expected value)."""
        if kind == "get":
            seen[key] = result
        elif kind == "put" or (kind == "cas" and result):
            seen[key] = arg[1] if kind == "cas" else arg
            with self._lock:
                self.acked.setdefault(key, []).append(seen[key])
        elif kind == "delete":
            seen[key] = None

    def _count(self, kind: str, outcome: str, exc: BaseException | None) -> str:
        with self._lock:
            self.outcomes[f"{kind}:{outcome}"] += 1
            if exc is not None:
                self.errors[type(exc).__name__] += 1
        return outcome

    # ------------------------------------------------------------------ the end

    def final_reads(self) -> dict[str, Any]:
        """One linearizable read of every key (retried until it completes), into the history."""
        client = self._factory()
        process = self._fresh_process()
        values: dict[str, Any] = {}
        deadline = time.monotonic() + self.config.final_read_timeout_s
        try:
            for i in range(self.config.keys):
                key = key_name(i)
                while time.monotonic() < deadline:
                    outcome = self.run_op(client, process, "get", key, None, values)
                    if outcome == "ok":
                        break
                    time.sleep(0.1)
        finally:
            client.close()
        return values

    def summary(self) -> dict[str, Any]:
        """Ops by kind and outcome, error types, acknowledged writes per key."""
        by_outcome: Counter[str] = Counter()
        for name, n in self.outcomes.items():
            by_outcome[name.split(":")[1]] += n
        return {
            "ops": sum(self.outcomes.values()),
            "by_outcome": dict(sorted(by_outcome.items())),
            "by_kind_outcome": dict(sorted(self.outcomes.items())),
            "errors": dict(sorted(self.errors.items())),
            "acked_writes": sum(len(v) for v in self.acked.values()),
        }


def unexplained_final_values(ops: Sequence[Op], final: dict[str, Any]) -> dict[str, Any]:
    """Final values that no put or cas ever tried to write (corruption, not just staleness)."""
    written: dict[str, set[Any]] = {}
    for op in ops:
        if op.kind == "put":
            written.setdefault(op.key, set()).add(op.value)
        elif op.kind == "cas":
            written.setdefault(op.key, set()).add(op.value[1])
    return {k: v for k, v in final.items() if v is not None and v not in written.get(k, set())}
