"""zraft: Raft consensus for Python — a pure core, a durable segmented log, ZeroMQ node actors.

Public names are imported lazily so that ``zraft.core`` (pure, stdlib only) can be
used without loading ZeroMQ, msgpack or the node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "zraft.client",
    "Config": "zraft.config",
    "Event": "zraft.events",
    "KV": "zraft.kv",
    "Node": "zraft.node",
    "StateMachine": "zraft.statemachine",
    "command": "zraft.statemachine",
    "query": "zraft.statemachine",
    **{
        name: "zraft.errors"
        for name in (
            "ApplicationError", "BusyError", "ChangeInProgress", "CommandFailed", "ConfigError",
            "NodeStopped", "NoSuchCommand", "NotLeaderError", "ReadTimeout",
            "StorageFailedError", "UnknownOutcome", "ZraftError",
        )
    },
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from zraft.client import Client
    from zraft.config import Config
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
    )
    from zraft.events import Event
    from zraft.kv import KV
    from zraft.node import Node
    from zraft.statemachine import StateMachine, command, query


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
