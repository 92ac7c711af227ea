"""Errors a zraft user can catch, split by whose fault they are.

``ZraftError`` is the root. Subclasses say what the caller can do next:
retry elsewhere (NotLeaderError), retry later (BusyError), give up knowing
nothing happened (CommandFailed), or check the state because the outcome is
unknown (UnknownOutcome). Misuse of the API raises ordinary TypeError/ValueError.
"""

from __future__ import annotations


class ZraftError(Exception):
    """Root of every error zraft raises on purpose."""

    code = "error"


class NotLeaderError(ZraftError):
    """This node cannot serve the request; ``leader`` names the one that can (or "")."""

    code = "not_leader"

    def __init__(self, message: str = "not the leader", leader: str = "", address: str = ""):
        super().__init__(message)
        self.leader = leader
        self.address = address


class BusyError(ZraftError):
    """Backpressure: too much is queued. Nothing was applied; retry later."""

    code = "busy"


class UnknownOutcome(ZraftError):
    """The command may or may not have been applied (timeout, crash, lost reply).

    Retrying through the same :class:`zraft.Client` is safe: its session makes the
    retry apply at most once.
    """

    code = "unknown_outcome"


class CommandFailed(ZraftError):
    """The command definitely did not take effect (rejected before it was committed)."""

    code = "command_failed"


class ApplicationError(ZraftError):
    """The user's handler raised; the entry is committed, the handler's error is returned."""

    code = "app_error"

    def __init__(self, message: str, exc_type: str = ""):
        super().__init__(message)
        self.exc_type = exc_type

    @classmethod
    def from_message(cls, message: str) -> ApplicationError:
        """From a node's ``"ValueError: text"``: ``exc_type`` is the handler's exception."""
        head, sep, _ = message.partition(": ")
        return cls(message, head if sep and head.isidentifier() else "")


class NoSuchCommand(ZraftError):
    """No command or query handler is registered under that name."""

    code = "no_such_command"


class ChangeInProgress(ZraftError):
    """A membership change is already in flight; one change at a time."""

    code = "change_in_progress"


class StorageFailedError(ZraftError):
    """The node's disk refused a write (e.g. full); it accepts no writes until repaired."""

    code = "storage_failed"


class NodeStopped(ZraftError):
    """The node is not running."""

    code = "stopped"


class ReadTimeout(ZraftError):
    """A read did not complete in time (no side effects to worry about)."""

    code = "timeout"


class ConfigError(ZraftError, ValueError):
    """The configuration is wrong; the message says which option and why."""

    code = "config"


ERRORS_BY_CODE: dict[str, type[ZraftError]] = {
    cls.code: cls
    for cls in (
        NotLeaderError,
        BusyError,
        UnknownOutcome,
        CommandFailed,
        ApplicationError,
        NoSuchCommand,
        ChangeInProgress,
        StorageFailedError,
        NodeStopped,
        ReadTimeout,
    )
}
ERRORS_BY_CODE["bad_request"] = CommandFailed


def error_from_code(code: str, message: str, leader: str = "", address: str = "") -> ZraftError:
    """Rebuild a typed error from a wire reply."""
    if code == "not_leader":
        return NotLeaderError(message, leader, address)
    cls = ERRORS_BY_CODE.get(code, ZraftError)
    return cls(message)
