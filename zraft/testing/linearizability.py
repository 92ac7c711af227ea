"""A linearizability checker for key-value histories (Wing & Gong, Lowe; as porcupine does it).

Why this shape:

* **P-compositionality**: a history is linearizable iff its restriction to
  every key is, so each key is checked on its own (small searches, per-key
  verdicts, a failure names its key).
* **WGL search**: the history becomes a doubly linked list of call and return
  events in time order. A call before the first pending return may be
  linearized next if the model accepts it; it is then lifted out of the list
  (dancing links) and the search goes on; at a return whose call was not
  linearized it backtracks. Visited ``(linearized-set, register-state)`` pairs
  are cached so no configuration is explored twice. The search is iterative
  (an explicit stack), so histories of tens of thousands of ops per key are
  fine.
* **Unknown outcomes are optional**: an op with ``ok=None`` may take effect at
  any time after its invocation, or never. Such ops stay out of the list; they
  are tried only when no known op fits, and only those that can explain an
  observation; the search succeeds once every *known* op is linearized.
  Unknown reads are dropped, unknown writes of a value nobody observes are
  dropped, and of several equivalent unknown writes only the earliest not yet
  used is tried: this keeps them from blowing up the search.
* **Definitely failed ops** (``ok=False``) had no effect and are dropped.
* **A second engine**: on a *failing* history with many unknown outcomes, WGL's
  depth-first order revisits configurations once per subset of unknown ops
  used, which explodes. A forward sweep over response events (Lowe's
  just-in-time linearization, all configurations at one response compared at
  once) does not. By default both run in turns of a few milliseconds and the
  first verdict wins; the sweep also explains failures best, as it stops at
  the first response no linearization can meet.

The model is a register per key: ``put`` sets it, ``delete`` makes it absent
(``None``), ``get`` returns it, ``cas(expected, new)`` swaps iff the register
equals ``expected`` and returns whether it did (a failed cas is still a read:
the register must differ from ``expected``). ``put(k, None)`` equals a delete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zraft.testing.history import Op, time_unit

#: Default memory budget for one key's cache of visited configurations.
MAX_MEMORY_BYTES_DEFAULT = 1 << 30

#: Rough bytes one cached configuration costs (key tuple, dict slot, list, small ints).
_STATE_BYTES = 300

#: The search engines (see :func:`check_key`).
ENGINES = ("auto", "wgl", "sweep")

#: How many linearized ops and candidates an explanation shows.
EXPLAIN_PREFIX_OPS = 10
EXPLAIN_CANDIDATES = 20
EXPLAIN_UNKNOWN = 5

# Op codes of the compiled model (one small int per op, for the hot loop).
_PUT = 0  # register := a (a delete is a put of the absent value 0)
_GET = 1  # requires register == a
_CAS_OK = 2  # requires register == a; register := b
_CAS_FAIL = 3  # requires register != a

# Nodes: 0 is the head of the list of known events; 1.. are events in time order, so
# comparing node numbers compares times. match[]: a known call holds its return node (>= 1).
_RETURN = -1
_UNKNOWN_CALL = -2
_END = -1  # "no next node"
_MAIN_HEAD = 0  # sentinel of the list of known calls and returns
_FIRST_EVENT = 1

# Time slices: an engine yields every so many steps (a power of two minus one, as a mask),
# so that the driver can check the deadline and interleave the engines.
_POLL_MASK = 0xFFF  # WGL: one step is one candidate looked at
_SWEEP_POLL_MASK = 0xFF  # sweep: one step expands one configuration


class _Untested:
    """Stands for any value that no op of the key tests for."""

    def __repr__(self) -> str:
        return "<a value nobody reads>"


#: The register state of a value no read returns and no cas expects (see _Problem).
UNTESTED = _Untested()
_UNTESTED_ID = 1


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a value, so equal lists/dicts (e.g. after JSON) compare equal."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return frozenset((_freeze(k), _freeze(v)) for k, v in value.items())
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(v) for v in value)
    assert isinstance(value, Hashable), f"unhashable value {value!r}"
    return value


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one key has no linearization: the point where every search attempt got stuck."""

    key: str
    op_count: int  #: ops of this key that took part in the check
    prefix: tuple[Op, ...]  #: the longest linearizable prefix found, in linearization order
    state: Any  #: the register after that prefix (None = absent)
    blocked: Op  #: the earliest-completing op that could not be linearized
    candidates: tuple[tuple[Op, str], ...]  #: the ops that could have gone next, and why not

    def explain(self) -> str:
        """Readable text naming the key, the stuck point and the offending operation."""
        shown = self.prefix[-EXPLAIN_PREFIX_OPS:]
        known = [(op, why) for op, why in self.candidates if not op.unknown]
        unknown = [(op, why) for op, why in self.candidates if op.unknown]
        every = [self.blocked, *shown, *(op for op, _ in self.candidates)]
        origin = min(op.invoke_ns for op in every)
        span = max(op.complete_ns or op.invoke_ns for op in every) - origin
        unit = time_unit(span)

        def line(op: Op, why: str = "") -> str:
            return f"    {op.describe(origin, unit)}" + (f": {why}" if why else "")

        lines = [
            f"key {self.key!r}: not linearizable ({self.op_count} ops checked)",
            f"  longest linearizable prefix: {len(self.prefix)} ops"
            + (f", the last {len(shown)}:" if len(shown) < len(self.prefix) else ":"),
            *(line(op) for op in shown),
            f"  register after the prefix: {_render(self.state)}",
            "  stuck: nothing fits next, yet this op must take effect before it returns:",
            line(self.blocked),
            "  the operations that could go next (invoked by then) and why they cannot:",
            *(line(op, why) for op, why in known[:EXPLAIN_CANDIDATES]),
        ]
        if len(known) > EXPLAIN_CANDIDATES:
            lines.append(f"    ... and {len(known) - EXPLAIN_CANDIDATES} more")
        if unknown:
            lines.append(
                f"  unknown-outcome operations that could have taken effect: {len(unknown)}"
            )
            lines += [line(op, why) for op, why in unknown[:EXPLAIN_UNKNOWN]]
            if len(unknown) > EXPLAIN_UNKNOWN:
                lines.append(f"    ... and {len(unknown) - EXPLAIN_UNKNOWN} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key. ``ok=None``: undecided (timeout or memory limit)."""

    key: str
    ok: bool | None
    op_count: int  #: ops that took part in the search
    dropped: int  #: ops left out: definitely failed, unknown reads, unobservable unknown writes
    states: int  #: configurations visited
    failure: Failure | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history: False if any key fails, None if any is undecided."""

    ok: bool | None
    keys: dict[str, KeyResult] = field(default_factory=dict)

    @property
    def failures(self) -> list[Failure]:
        return [r.failure for r in self.keys.values() if r.failure is not None]

    def explain(self) -> str:
        """A summary line, then every failing key's explanation."""
        if self.ok is True:
            ops = sum(r.op_count for r in self.keys.values())
            return f"linearizable: {ops} ops over {len(self.keys)} keys"
        undecided = [r for r in self.keys.values() if r.ok is None]
        parts: list[str] = []
        if self.ok is False:
            parts.append(f"NOT linearizable: {len(self.failures)} of {len(self.keys)} keys fail")
            parts += [f.explain() for f in self.failures]
        if undecided:
            parts.append(
                "undecided keys: "
                + ", ".join(f"{r.key!r} ({r.note})" for r in undecided[:EXPLAIN_CANDIDATES])
            )
        return "\n".join(parts)


def _render(value: Any) -> str:
    return "<absent>" if value is None else repr(value)


class _Problem:
    """One key's history compiled to flat arrays: model codes and the event lists."""

    def __init__(self, key: str, ops: Sequence[Op]) -> None:
        self.key = key
        kept, self.dropped = _relevant(ops)
        self.ops = kept
        # Values no op tests for (no read returns them, no cas expects them) behave alike
        # under every op, so they share one id: fewer states, and unknown writes of such
        # values become interchangeable.
        tested = {_freeze(op.result) for op in kept if op.kind == "get"}
        tested |= {_freeze(op.value[0]) for op in kept if op.kind == "cas"}
        self.values: list[Any] = [None, UNTESTED]  # value id -> a representative value
        ids: dict[Hashable, int] = {None: 0}

        def intern(value: Any) -> int:
            frozen = _freeze(value)
            if frozen not in tested and frozen is not None:
                return _UNTESTED_ID
            vid = ids.get(frozen)
            if vid is None:
                vid = ids[frozen] = len(self.values)
                self.values.append(value)
            return vid

        self.code: list[int] = []
        self.arg_a: list[int] = []
        self.arg_b: list[int] = []
        for op in kept:
            code, a, b = _compile(op, intern)
            self.code.append(code)
            self.arg_a.append(a)
            self.arg_b.append(b)
        self.known = [not op.unknown for op in kept]
        counts = [0, 0]  # bit positions: known and unknown ops counted apart, by invocation
        self.ordinal: list[int] = []
        for known in self.known:
            self.ordinal.append(counts[known])
            counts[known] += 1
        self._build_events()
        self.unknown_ops = sorted(
            (i for i in range(len(kept)) if not self.known[i]), key=lambda i: self.call_node[i]
        )
        self._index_unknowns()

    def _index_unknowns(self) -> None:
        """Unknown ops grouped into classes of equal effect, each in invocation order."""
        classes: dict[tuple[int, int, int], list[int]] = {}
        for i in self.unknown_ops:
            classes.setdefault((self.code[i], self.arg_a[i], self.arg_b[i]), []).append(i)
        self.leaving: dict[int, list[list[int]]] = {}  # value id -> classes that leave it
        self.cas_from: dict[int, list[list[int]]] = {}  # value id -> cas classes expecting it
        self.cas_into: dict[int, set[int]] = {}  # value id -> values a cas turns into it
        for (code, a, b), cls in classes.items():
            self.leaving.setdefault(a if code == _PUT else b, []).append(cls)
            if code == _CAS_OK:
                self.cas_from.setdefault(a, []).append(cls)
                self.cas_into.setdefault(b, set()).add(a)

    def _build_events(self) -> None:
        """Node 0 heads the list of known events; then one node per event, in time order."""
        events: list[tuple[int, int, int]] = []  # (time, 0=call/1=return, op index)
        for i, op in enumerate(self.ops):
            events.append((op.invoke_ns, 0, i))
            if self.known[i]:
                assert op.complete_ns is not None
                events.append((op.complete_ns, 1, i))
        events.sort()  # calls before returns at equal times: touching intervals overlap
        size = len(events) + _FIRST_EVENT
        self.nxt = [_END] * size
        self.prv = [_END] * size
        self.match = [_RETURN] * size
        self.opi = [-1] * size
        call_node: dict[int, int] = {}
        tail = _MAIN_HEAD
        for pos, (_, is_return, i) in enumerate(events):
            node = pos + _FIRST_EVENT
            self.opi[node] = i
            if is_return:
                self.match[call_node[i]] = node
            else:
                call_node[i] = node
                self.match[node] = _RETURN if self.known[i] else _UNKNOWN_CALL
            if self.known[i]:  # unknown calls stay out of the list: see _unknown_candidates
                self.nxt[tail], self.prv[node] = node, tail
                tail = node
        self.call_node = call_node


def _relevant(ops: Sequence[Op]) -> tuple[list[Op], int]:
    """Drop ops that cannot change the verdict; returns (kept, dropped count)."""
    live = [op for op in ops if op.ok is not False]
    live = [op for op in live if not (op.unknown and op.kind == "get")]
    live = [
        op
        for op in live
        if not (op.unknown and op.kind == "cas" and _freeze(op.value[0]) == _freeze(op.value[1]))
    ]
    if not any(op.kind == "cas" and op.ok and op.result is False for op in live):
        # Without failed cas ops, only reads and cas expectations observe the register,
        # so an unknown write of a value nobody observes can always be left out.
        seen = {_freeze(op.result) for op in live if op.kind == "get"}
        seen |= {_freeze(op.value[0]) for op in live if op.kind == "cas"}
        live = [op for op in live if not op.unknown or _freeze(_written(op)) in seen]
    live.sort(key=lambda op: (op.invoke_ns, op.id))  # bit order ~ linearization order
    return live, len(ops) - len(live)


def _written(op: Op) -> Any:
    """The value a write op leaves in the register (None = absent)."""
    if op.kind == "put":
        return op.value
    if op.kind == "cas":
        return op.value[1]
    assert op.kind == "delete", op.kind
    return None


def _compile(op: Op, intern: Callable[[Any], int]) -> tuple[int, int, int]:
    """The op as (code, a, b) over interned value ids."""
    if op.kind == "put":
        return _PUT, intern(op.value), 0
    if op.kind == "delete":
        return _PUT, 0, 0
    if op.kind == "get":
        return _GET, intern(op.result), 0
    expected, new = op.value
    if op.unknown or op.result is True:
        return _CAS_OK, intern(expected), intern(new)
    return _CAS_FAIL, intern(expected), 0


def _lift(nxt: list[int], prv: list[int], match: list[int], node: int) -> None:
    """Unlink a call node and its return node (if any) from their lists."""
    for n in (node, match[node]):
        if n < 0:
            break
        p, q = prv[n], nxt[n]
        nxt[p] = q
        if q != _END:
            prv[q] = p


def _unlift(nxt: list[int], prv: list[int], match: list[int], node: int) -> None:
    """Undo :func:`_lift` (dancing links: reinsert in the reverse order)."""
    for n in (match[node], node):
        if n < 0:
            continue
        nxt[prv[n]] = n
        if nxt[n] != _END:
            prv[nxt[n]] = n


_Prefix = tuple[int, Any] | None  # a cons list of op indices, newest first


@dataclass(slots=True)
class _Outcome:
    ok: bool | None
    states: int
    best_prefix: list[int]  # op indices in linearization order, of the deepest attempt
    note: str = ""


def _search(p: _Problem, max_states: int) -> Generator[int, None, _Outcome]:
    """The WGL search for one key (see the module docstring).

    Unknown ops are tried only once no known op fits, and only those that can
    help: right after an unknown write the next op must *need* it, i.e. be
    rejected by the register before that write and accepted after it
    (``forbid`` holds the state before). Any linearization can be brought to
    that form: move each unknown write down to its first observer, drop it if
    it is overwritten unobserved.

    The cache maps (known ops linearized, state, forbid) to the sets of unknown
    ops used when that configuration was visited. A configuration that used a
    superset of unknown ops has fewer options left, so it is dominated and skipped.
    """
    nxt, prv, match, opi = list(p.nxt), list(p.prv), p.match, p.opi
    code, arg_a, arg_b, call_node, ordinal = p.code, p.arg_a, p.arg_b, p.call_node, p.ordinal
    done = bytearray(len(p.ops))  # linearized flags, cheap to test
    # Known ops are linearized roughly in bit order, so the bitset is a run of ones and a
    # few bits above: cached as (bits above the run, run length), small however long.
    cache: dict[tuple[int, int, int, int], list[int]] = {}
    # Frames: (call node, state, forbid, unknown candidates, position) from before the op.
    stack: list[tuple[int, int, int, list[int], int]] = []
    prefix: _Prefix = None  # cons list of linearized op indices
    best_depth, best_prefix = -1, prefix
    state = klin = ulin = steps = states = 0  # klin/ulin: bitsets of known/unknown ops done
    forbid = -1  # >= 0: the next op must be rejected in this state (it observes an unknown write)
    cur, ucands, upos = nxt[_MAIN_HEAD], _NO_CANDIDATES, -1  # upos >= 0: in the unknown phase
    while nxt[_MAIN_HEAD] != _END:
        steps += 1
        if steps & _POLL_MASK == 0:
            yield states
        if upos < 0 and match[cur] == _RETURN:  # known candidates exhausted
            ucands, upos = _unknown_candidates(p, nxt, cur, state, forbid, done), 0
            continue
        if upos >= len(ucands):  # dead end
            if forbid < 0 and len(stack) > best_depth:
                best_depth, best_prefix = len(stack), prefix
            if not stack:
                return _Outcome(False, states, _unwind(best_prefix))
            node, state, forbid, ucands, upos = stack.pop()
            i = opi[node]
            if upos >= 0:
                ulin ^= 1 << ordinal[i]
                upos += 1
            else:
                klin ^= 1 << ordinal[i]
                _unlift(nxt, prv, match, node)
                cur = nxt[node]
            done[i] = 0
            assert prefix is not None and prefix[0] == i
            prefix = prefix[1]
            continue
        node = cur if upos < 0 else call_node[ucands[upos]]
        i = opi[node]
        c, a = code[i], arg_a[i]
        if c == _PUT:
            new_state = a
        elif c == _CAS_OK:
            new_state = arg_b[i] if state == a else -1
        else:  # a read: _GET needs state == a, _CAS_FAIL needs state != a
            new_state = state if (state == a) != (c == _CAS_FAIL) else -1
        if new_state >= 0 and (forbid < 0 or (c != _PUT and (forbid == a) == (c == _CAS_FAIL))):
            if upos >= 0:
                new_klin, used, new_forbid = klin, ulin | (1 << ordinal[i]), state
            else:
                new_klin, used, new_forbid = klin | (1 << ordinal[i]), ulin, -1
            run = (new_klin ^ (new_klin + 1)).bit_length() - 1
            key = (new_klin >> run, run, new_state, new_forbid)
            if not _dominated(cache.setdefault(key, []), used):
                states += 1
                if states > max_states:
                    return _Outcome(None, states, _unwind(best_prefix), "memory limit")
                stack.append((node, state, forbid, ucands, upos))
                prefix = (i, prefix)
                state, klin, ulin, forbid, done[i] = new_state, new_klin, used, new_forbid, 1
                if upos < 0:
                    _lift(nxt, prv, match, node)
                cur, ucands, upos = nxt[_MAIN_HEAD], _NO_CANDIDATES, -1
                continue
        if upos < 0:
            cur = nxt[cur]
        else:
            upos += 1
    return _Outcome(True, states, [])


_NO_CANDIDATES: list[int] = []


def _unknown_candidates(
    p: _Problem, nxt: list[int], ret: int, state: int, forbid: int, done: bytearray
) -> list[int]:
    """WGL's unknown ops worth trying before the response ``ret``, in invocation order."""
    pending = []
    node = nxt[_MAIN_HEAD]
    while node != ret:  # the known calls before the first pending response
        pending.append(p.opi[node])
        node = nxt[node]
    found: list[int] = []
    for cls in _wanted_classes(p, pending, state, forbid):
        for i in cls:  # in invocation order: the first unused one, if invoked in time
            if p.call_node[i] >= ret:
                break
            if not done[i]:
                found.append(i)
                break
    found.sort(key=p.call_node.__getitem__)
    return found


def _wanted_classes(
    p: _Problem, pending: list[int], state: int, forbid: int
) -> Sequence[list[int]]:
    """The classes of unknown ops that may usefully go next, given the pending known ops.

    Only writes of a value some candidate wants (a pending read or cas that the
    current state fails, or an unknown cas that turns it into such a value), or,
    right after an unknown write, a cas consuming it. Of a class (equal effect)
    only the earliest unused op needs trying.
    """
    if forbid >= 0:
        return p.cas_from.get(state, [])
    wanted: set[int] = set()
    for i in pending:
        c, a = p.code[i], p.arg_a[i]
        if c == _CAS_FAIL and a == state:  # any other value explains that failed swap
            wanted = set(p.leaving) - {state}
            break
        if c != _PUT and c != _CAS_FAIL and a != state:
            wanted.add(a)
    todo = list(wanted)
    while todo:  # an unknown cas a -> b makes a wanted if b is
        for a in p.cas_into.get(todo.pop(), ()):
            if a != state and a not in wanted:
                wanted.add(a)
                todo.append(a)
    return [cls for v in wanted for cls in p.leaving.get(v, ())]


def _dominated(seen: list[int], used: int) -> bool:
    """True if a visit with a subset of ``used`` is recorded; else record ``used``."""
    if not seen:
        seen.append(used)
        return False
    for old in seen:
        if old & ~used == 0:
            return True
    seen[:] = [old for old in seen if used & ~old != 0]  # drop those ``used`` dominates
    seen.append(used)
    return False


# A frontier maps (mask of linearized pending known ops, state) to its antichain of
# (unknown ops used, linearization so far as a cons list).
_Frontier = dict[tuple[int, int], list[tuple[int, _Prefix]]]


class _Sweep:
    """The fallback engine: a forward sweep over return events (Lowe's just-in-time variant).

    WGL's depth-first order can revisit one configuration once per subset of
    unknown ops used to reach it, which explodes on *failing* histories with many
    unknown outcomes. The sweep keeps, at each response, every configuration
    that can be reached with that op linearized, compared all at once: a
    configuration is kept only with minimal sets of unknown ops used. The first
    response with no surviving configuration is exactly where the history fails.
    """

    def __init__(self, p: _Problem, max_states: int) -> None:
        self.p, self.max_states = p, max_states
        self.states = 0
        self.window: list[int] = []  # pending known ops, by invocation
        self.slot = [-1] * len(p.ops)  # bit of a pending known op in a mask
        self.free_slots: list[int] = []
        self.now = _FIRST_EVENT  # the response being processed: unknown ops invoked before it

    def run(self) -> Generator[int, None, _Outcome]:
        p = self.p
        frontier: _Frontier = {(0, 0): [(0, None)]}
        for node in range(_FIRST_EVENT, len(p.match)):
            i, kind = p.opi[node], p.match[node]
            if kind == _UNKNOWN_CALL:
                continue  # available from now on: see _candidates
            if kind >= 0:
                self.slot[i] = self.free_slots.pop() if self.free_slots else len(self.window)
                assert all(self.slot[j] != self.slot[i] for j in self.window)
                self.window.append(i)
            else:
                self.now = node
                nxt_frontier = yield from self._closure(frontier, i)
                if nxt_frontier is None:
                    return _Outcome(None, self.states, [], "memory limit")
                if not nxt_frontier:
                    prefix = next(iter(frontier.values()))[0][1]
                    return _Outcome(False, self.states, _unwind(prefix))
                frontier = nxt_frontier
                self.window.remove(i)
                self.free_slots.append(self.slot[i])
        return _Outcome(True, self.states, [])

    def _closure(self, frontier: _Frontier, r: int) -> Generator[int, None, _Frontier | None]:
        """Every configuration with ``r`` linearized (None: out of memory)."""
        rbit = 1 << self.slot[r]
        out: _Frontier = {}
        visited: dict[tuple[int, int, int], list[int]] = {}
        stack: list[tuple[int, int, int, int, _Prefix]] = []
        for (mask, state), entries in frontier.items():
            for used, prefix in entries:
                if mask & rbit:
                    _admit(out, (mask ^ rbit, state), used, prefix)
                elif not _dominated(visited.setdefault((mask, state, -1), []), used):
                    stack.append((mask, state, -1, used, prefix))
        while stack:
            self.states += 1
            if self.states & _SWEEP_POLL_MASK == 0:
                yield self.states
            if len(visited) > self.max_states:
                return None
            mask, state, forbid, used, prefix = stack.pop()
            for i, new_state in self._candidates(mask, state, forbid, used):
                if not self.p.known[i]:
                    key = (mask, new_state, state)
                    new_used = used | 1 << self.p.ordinal[i]
                else:
                    key = (mask | 1 << self.slot[i], new_state, -1)
                    new_used = used
                if i == r:
                    _admit(out, (key[0] ^ rbit, new_state), new_used, (i, prefix))
                elif not _dominated(visited.setdefault(key, []), new_used):
                    stack.append((*key, new_used, (i, prefix)))
        return out

    def _candidates(self, mask: int, state: int, forbid: int, used: int) -> list[tuple[int, int]]:
        """(op, state after it) for each op that may be linearized next."""
        p, out = self.p, []
        for i in self.window:
            if not mask & 1 << self.slot[i]:
                ok, new_state = _apply(p, i, state)
                if ok and (forbid < 0 or not _apply(p, i, forbid)[0]):
                    out.append((i, new_state))
        pending = [i for i in self.window if not mask & 1 << self.slot[i]]
        for cls in _wanted_classes(p, pending, state, forbid):
            for i in cls:  # in invocation order: the first unused one, if invoked in time
                if p.call_node[i] >= self.now:
                    break
                if not used & 1 << p.ordinal[i]:
                    ok, new_state = _apply(p, i, state)
                    if ok and new_state != state:
                        out.append((i, new_state))
                    break
        return out


def _apply(p: _Problem, i: int, state: int) -> tuple[bool, int]:
    """The model: is op ``i`` accepted in ``state``, and the state after it."""
    c, a = p.code[i], p.arg_a[i]
    if c == _PUT:
        return True, a
    if c == _CAS_OK:
        return state == a, p.arg_b[i]
    return (state == a) == (c == _GET), state


def _admit(out: _Frontier, key: tuple[int, int], used: int, prefix: _Prefix) -> None:
    """Add a configuration to a frontier unless a subset of its unknown ops already got there."""
    entries = out.setdefault(key, [])
    if any(old & ~used == 0 for old, _ in entries):
        return
    entries[:] = [(old, pre) for old, pre in entries if used & ~old != 0]
    entries.append((used, prefix))


def _unwind(prefix: tuple[int, Any] | None) -> list[int]:
    out: list[int] = []
    while prefix is not None:
        out.append(prefix[0])
        prefix = prefix[1]
    out.reverse()
    return out


def _why_not(p: _Problem, i: int, state: int, held: Any) -> str:
    """Why op ``i`` is rejected in ``state`` (``held``: the real value behind it), or ""."""
    ok, _ = _apply(p, i, state)
    if ok:
        return ""
    op, reg = p.ops[i], _render(held)
    if op.kind == "get":
        return f"read {_render(op.result)} but the register holds {reg}"
    if op.ok is None or op.result is True:
        return f"swapped expecting {_render(op.value[0])} but the register holds {reg}"
    return f"did not swap although the register holds the expected {reg}"


def _failure(p: _Problem, prefix: list[int]) -> Failure:
    """Rebuild the stuck point of the deepest attempt and say why each candidate fails there."""
    state, held = 0, None  # the model's state, and the real value written last
    for i in prefix:
        ok, state = _apply(p, i, state)
        assert ok, "the recorded prefix must replay"
        op = p.ops[i]
        if op.kind in ("put", "delete"):
            held = op.value if op.kind == "put" else None
        elif op.kind == "cas" and (op.ok is None or op.result is True):
            held = op.value[1]
    taken = set(prefix)
    pending = [i for i in range(len(p.ops)) if p.known[i] and i not in taken]
    assert pending, "a failed key has an op left to linearize"
    blocked = min(pending, key=lambda i: p.match[p.call_node[i]])
    limit = p.match[p.call_node[blocked]]
    cands = [i for i in range(len(p.ops)) if i not in taken and p.call_node[i] < limit]
    cands.sort(key=lambda i: p.call_node[i])
    explained = [
        (p.ops[i], _why_not(p, i, state, held) or "fits here, but no continuation from there works")
        for i in cands
    ]
    return Failure(
        key=p.key,
        op_count=len(p.ops),
        prefix=tuple(p.ops[i] for i in prefix),
        state=held,
        blocked=p.ops[blocked],
        candidates=tuple(explained),
    )


def check_key(
    key: str,
    ops: Sequence[Op],
    *,
    deadline: float | None = None,
    max_memory_bytes: int = MAX_MEMORY_BYTES_DEFAULT,
    engine: str = "auto",
) -> KeyResult:
    """Check the ops of one key (all of ``ops`` must be on ``key``).

    ``engine``: "wgl" (depth-first, fast on good histories), "sweep" (forward,
    robust on bad ones with many unknown outcomes), or "auto": both, in turns
    of a few milliseconds, until one decides (so never much slower than the
    better one). A failure is explained by the sweep when it gets there in time.
    """
    assert all(op.key == key for op in ops)
    assert engine in ENGINES, engine
    problem = _Problem(key, ops)
    n = len(problem.ops)
    unknown = len(problem.unknown_ops)
    max_states = max(1, max_memory_bytes // (_STATE_BYTES + unknown // 8))
    engines: dict[str, Generator[int, None, _Outcome]] = {}
    if engine != "sweep":
        engines["wgl"] = _search(problem, max_states)
    if engine != "wgl":
        engines["sweep"] = _Sweep(problem, max_states).run()
    outcomes = _drive(engines, deadline)
    decided = [o for o in outcomes.values() if o.ok is not None]
    assert len({o.ok for o in decided}) <= 1, f"engines disagree on key {key!r}"
    states = sum(o.states for o in outcomes.values())
    if not decided:
        notes = sorted({o.note for o in outcomes.values()})
        return KeyResult(key, None, n, problem.dropped, states, None, ", ".join(notes))
    out = outcomes["sweep"] if outcomes.get("sweep") in decided else decided[0]
    failure = _failure(problem, out.best_prefix) if out.ok is False else None
    return KeyResult(key, out.ok, n, problem.dropped, states, failure)


def _drive(
    engines: dict[str, Generator[int, None, _Outcome]], deadline: float | None
) -> dict[str, _Outcome]:
    """Run engines in turns until one proves linearizable, or all stop, or time is up.

    A False from WGL lets the sweep go on (until the deadline) to explain it.
    """
    outcomes: dict[str, _Outcome] = {}
    progress = dict.fromkeys(engines, 0)
    while engines:
        if deadline is not None and time.monotonic() >= deadline:
            break
        for name, gen in list(engines.items()):
            try:
                progress[name] = next(gen)
            except StopIteration as stop:
                outcomes[name] = stop.value
                del engines[name]
                if stop.value.ok is True or (stop.value.ok is False and name == "sweep"):
                    engines.clear()
                    break
    for name, gen in engines.items():
        gen.close()
        outcomes[name] = _Outcome(None, progress[name], [], "timed out")
    return outcomes


def check(
    history: Sequence[Op],
    *,
    timeout_s: float | None = None,
    max_memory_bytes: int = MAX_MEMORY_BYTES_DEFAULT,
    engine: str = "auto",
) -> CheckResult:
    """Is ``history`` linearizable for a register-per-key store?

    ``ok`` is True or False when decided, None when a key ran out of time
    (``timeout_s`` for the whole check) or of memory (``max_memory_bytes`` per key).
    ``engine`` is for tests and tools; see :func:`check_key`.
    """
    assert timeout_s is None or timeout_s >= 0
    assert len({op.id for op in history}) == len(history), "op ids must be unique"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    by_key: dict[str, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    results: dict[str, KeyResult] = {}
    for key in sorted(by_key):
        results[key] = check_key(
            key, by_key[key], deadline=deadline, max_memory_bytes=max_memory_bytes, engine=engine
        )
    verdicts = [r.ok for r in results.values()]
    ok = False if False in verdicts else (None if None in verdicts else True)
    return CheckResult(ok, results)
