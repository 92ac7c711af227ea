"""The recorded history of a concurrent client workload against a key-value store.

A history is what a linearizability checker judges: for every operation, who
called it, when it was invoked, when (and whether) it completed, and what it
returned. Times come from one monotonic clock shared by all clients of a
recorder, so intervals of different clients are comparable.

Three outcomes matter (Jepsen's vocabulary):

* ``ok=True``: completed, took effect exactly once inside its interval;
* ``ok=False``: definitely failed, had no effect (the checker drops it);
* ``ok=None``: unknown (timeout, crash, ``UnknownOutcome``): it may or may not
  have taken effect, at any time after its invocation.

Histories persist as JSON lines (one op per line) so that ``tools/`` can check,
shrink or replay a history recorded by a chaos run. Values must therefore be
JSON-serialisable when a history is persisted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The operation kinds of the key-value model.
KINDS: frozenset[str] = frozenset({"put", "get", "delete", "cas"})

#: Default cap on the ops one recorder holds: a runaway workload fails loudly.
MAX_OPS_DEFAULT = 1_000_000

#: Longest line accepted when reading a JSONL history (a guard against garbage).
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One client operation. Keyword-only: histories are read far more than written.

    ``value`` is the value written by a put, and ``(expected, new)`` for a cas.
    ``result`` is the value read by a get (``None`` = absent) and the swapped
    flag (``bool``) of a cas. ``complete_ns`` is ``None`` when the outcome is
    unknown; ``ok`` is then ``None`` as well.
    """

    id: int
    client: int
    kind: str
    key: str
    value: Any = None
    invoke_ns: int
    complete_ns: int | None
    ok: bool | None
    result: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op {self.id}: unknown kind {self.kind!r}")
        if self.kind == "cas":
            if not isinstance(self.value, tuple) or len(self.value) != 2:
                raise ValueError(f"op {self.id}: cas value must be a tuple (expected, new)")
            if self.ok is True and not isinstance(self.result, bool):
                raise ValueError(f"op {self.id}: a completed cas needs a bool result")
        if self.ok is not None and self.complete_ns is None:
            raise ValueError(f"op {self.id}: a definite outcome needs complete_ns")
        if self.complete_ns is not None and self.complete_ns < self.invoke_ns:
            raise ValueError(f"op {self.id}: completed before it was invoked")

    @property
    def unknown(self) -> bool:
        """True when the op may or may not have taken effect."""
        return self.ok is None

    def to_json_obj(self) -> dict[str, Any]:
        """A JSON-ready dict (a cas value becomes a 2-element list)."""
        obj = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.kind == "cas":
            obj["value"] = list(self.value)
        return obj

    @staticmethod
    def from_json_obj(obj: Mapping[str, Any]) -> Op:
        """The inverse of :meth:`to_json_obj`; validates field types."""
        for name in ("id", "client", "invoke_ns"):
            if not isinstance(obj.get(name), int):
                raise ValueError(f"op field {name!r} must be an int: {obj!r}")
        for name in ("kind", "key"):
            if not isinstance(obj.get(name), str):
                raise ValueError(f"op field {name!r} must be a str: {obj!r}")
        complete_ns = obj.get("complete_ns")
        ok = obj.get("ok")
        if complete_ns is not None and not isinstance(complete_ns, int):
            raise ValueError(f"op field 'complete_ns' must be an int or null: {obj!r}")
        if ok is not None and not isinstance(ok, bool):
            raise ValueError(f"op field 'ok' must be a bool or null: {obj!r}")
        value = obj.get("value")
        if obj["kind"] == "cas" and isinstance(value, list):
            value = tuple(value)
        return Op(
            id=obj["id"],
            client=obj["client"],
            kind=obj["kind"],
            key=obj["key"],
            value=value,
            invoke_ns=obj["invoke_ns"],
            complete_ns=complete_ns,
            ok=ok,
            result=obj.get("result"),
        )

    def describe(self, origin_ns: int = 0, unit: str = "ms") -> str:
        """One readable line: ``#7 c2 cas('k', 0 -> 1) -> True [1.000..2.500 ms]``."""
        if self.kind == "put":
            call = f"put({self.key!r}, {self.value!r})"
        elif self.kind == "cas":
            call = f"cas({self.key!r}, {self.value[0]!r} -> {self.value[1]!r})"
        else:
            call = f"{self.kind}({self.key!r})"
        if self.ok is None:
            outcome = " -> ? (unknown outcome)"
        elif self.ok is False:
            outcome = " -> failed"
        elif self.kind in ("get", "cas"):
            outcome = f" -> {self.result!r}"
        else:
            outcome = " -> ok"
        scale = TIME_UNITS_NS[unit]
        start = f"{(self.invoke_ns - origin_ns) / scale:.3f}"
        end = "inf" if self.complete_ns is None else f"{(self.complete_ns - origin_ns) / scale:.3f}"
        if scale == 1:
            start, end = start.removesuffix(".000"), end.removesuffix(".000")
        return f"#{self.id} c{self.client} {call}{outcome} [{start}..{end} {unit}]"


#: Units for rendering times, in ns.
TIME_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def time_unit(span_ns: int) -> str:
    """The unit that renders a span of time readably (three decimals)."""
    for unit in ("ns", "us", "ms"):
        if span_ns < 10_000 * TIME_UNITS_NS[unit]:
            return unit
    return "s"


class HistoryRecorder:
    """Thread-safe recorder: clients call :meth:`invoke` before and :meth:`complete` after.

    An op invoked but never completed (the client crashed, the test stopped)
    shows up in :meth:`ops` as an unknown outcome, which is exactly what it is.
    """

    def __init__(
        self,
        *,
        max_ops: int = MAX_OPS_DEFAULT,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        assert max_ops > 0
        self._max_ops = max_ops
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._ops: dict[int, Op] = {}
        self._done: set[int] = set()
        self._next_id = 0

    def invoke(self, client: int, kind: str, key: str, value: Any = None) -> int:
        """Record an invocation now; returns the op id to complete later."""
        with self._lock:
            if len(self._ops) >= self._max_ops:
                raise OverflowError(f"history holds {self._max_ops} ops already")
            op_id = self._next_id
            op = Op(
                id=op_id,
                client=client,
                kind=kind,
                key=key,
                value=tuple(value) if kind == "cas" else value,
                invoke_ns=self._clock_ns(),
                complete_ns=None,
                ok=None,
            )
            self._next_id += 1
            self._ops[op_id] = op
            return op_id

    def complete(self, op_id: int, ok: bool, result: Any = None) -> None:
        """Record a definite outcome now: ``ok`` took effect, ``not ok`` had no effect."""
        with self._lock:
            op = self._take(op_id)
            done = dataclasses.replace(op, complete_ns=self._clock_ns(), ok=ok, result=result)
            self._ops[op_id] = done

    def unknown(self, op_id: int) -> None:
        """Record that the outcome will never be known (timeout, lost connection)."""
        with self._lock:
            self._take(op_id)

    def _take(self, op_id: int) -> Op:
        op = self._ops.get(op_id)
        if op is None:
            raise KeyError(f"no op {op_id} was invoked")
        if op_id in self._done:
            raise ValueError(f"op {op_id} was already completed")
        self._done.add(op_id)
        return op

    def ops(self) -> list[Op]:
        """A snapshot of the history, ordered by id (= invocation order)."""
        with self._lock:
            return [self._ops[i] for i in sorted(self._ops)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def to_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Persist the history, one op per line."""
        write_jsonl(self.ops(), path)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> HistoryRecorder:
        """A recorder holding a persisted history; loaded ops count as completed."""
        ops = read_jsonl(path)
        rec = cls(max_ops=max(MAX_OPS_DEFAULT, len(ops) + 1))
        for op in ops:
            if op.id in rec._ops:
                raise ValueError(f"duplicate op id {op.id} in {path}")
            rec._ops[op.id] = op
            rec._done.add(op.id)
        rec._next_id = max(rec._ops, default=-1) + 1
        return rec


def write_jsonl(ops: Iterable[Op], path: str | os.PathLike[str]) -> None:
    """Write ops as JSON lines (atomically: a temp file renamed into place)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps(op.to_json_obj(), separators=(",", ":")))
            f.write("\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike[str]) -> list[Op]:
    """Read ops written by :func:`write_jsonl`; blank lines are skipped."""
    ops: list[Op] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: an op must be a JSON object")
            ops.append(Op.from_json_obj(obj))
    return ops
