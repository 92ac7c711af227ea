"""What a user provides: a state machine with named commands and queries.

Two ways to register handlers, so both goraft users and class-minded users feel
at home: decorate methods of a :class:`StateMachine` subclass with
:func:`command` / :func:`query`, or call :meth:`StateMachine.register_command`
at runtime. Handlers run on the node's reactor thread, in log order, exactly
once per committed entry per node; they must be deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_KIND_ATTR = "__zraft_kind__"


def command(fn: F) -> F:
    """Mark a method as a replicated command (goes through the log); name = method name."""
    setattr(fn, _KIND_ATTR, "command")
    return fn


def query(fn: F) -> F:
    """Mark a method as a read-only query (served without a log entry)."""
    setattr(fn, _KIND_ATTR, "query")
    return fn


class StateMachine:
    """Base class for replicated state. Override :meth:`snapshot` and :meth:`restore`.

    ``snapshot()`` must capture the state at the moment it is called: return
    ``bytes``, or an iterable of ``bytes`` chunks over an immutable copy. The node
    writes it to disk on a helper thread while commands keep being applied, so a
    lazy iterator over live, mutating state would tear.
    """

    def __init__(self) -> None:
        self._commands: dict[str, Callable[..., Any]] = {}
        self._queries: dict[str, Callable[..., Any]] = {}
        for name in dir(type(self)):
            attr = getattr(type(self), name, None)
            kind = getattr(attr, _KIND_ATTR, None)
            if kind == "command":
                self._commands[name] = getattr(self, name)
            elif kind == "query":
                self._queries[name] = getattr(self, name)

    # -- runtime registration (goraft's RegisterCommand style) ---------------------------------

    def register_command(self, name: str, handler: Callable[..., Any]) -> None:
        """Register ``handler(*args)`` as replicated command ``name``."""
        self._check_name(name)
        self._commands[name] = handler

    def register_query(self, name: str, handler: Callable[..., Any]) -> None:
        """Register ``handler(*args)`` as read-only query ``name``."""
        self._check_name(name)
        self._queries[name] = handler

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"handler name must be a non-empty str of <= 200 chars, got {name!r}")
        if name in self._commands or name in self._queries:
            raise ValueError(f"a handler named {name!r} is already registered")

    def command_handler(self, name: str) -> Callable[..., Any] | None:
        return self._commands.get(name)

    def query_handler(self, name: str) -> Callable[..., Any] | None:
        return self._queries.get(name)

    def command_names(self) -> list[str]:
        return sorted(self._commands)

    def query_names(self) -> list[str]:
        return sorted(self._queries)

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self) -> bytes | Iterable[bytes]:
        """Serialize the whole state. The default refuses: override to enable compaction."""
        raise NotImplementedError(f"{type(self).__name__} does not implement snapshot()")

    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by :meth:`snapshot`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement restore()")

    def restore_chunks(self, chunks: Iterator[bytes]) -> None:
        """Restore from a stream of chunks. Override to restore a big state incrementally.

        The default joins the chunks and calls :meth:`restore`, which holds the whole
        snapshot in memory once; a large state machine should parse as it reads.
        """
        self.restore(b"".join(chunks))

    def supports_snapshots(self) -> bool:
        return type(self).snapshot is not StateMachine.snapshot
