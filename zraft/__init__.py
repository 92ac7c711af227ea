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
    "tune_gc": "zraft.gc_tuning",
    **{
        name: "zraft.errors"
        for name in (
            "ApplicationError",
            "BusyError",
            "ChangeInProgress",
            "CommandFailed",
            "ConfigError",
            "NodeStopped",
            "NoSuchCommand",
            "NotLeaderError",
            "ReadTimeout",
            "StorageFailedError",
            "UnknownOutcome",
            "ZraftError",
        )
    },
}


if TYPE_CHECKING:
    from zraft.client import Client as Client
    from zraft.config import Config as Config
    from zraft.errors import ApplicationError as ApplicationError
    from zraft.errors import BusyError as BusyError
    from zraft.errors import ChangeInProgress as ChangeInProgress
    from zraft.errors import CommandFailed as CommandFailed
    from zraft.errors import ConfigError as ConfigError
    from zraft.errors import NodeStopped as NodeStopped
    from zraft.errors import NoSuchCommand as NoSuchCommand
    from zraft.errors import NotLeaderError as NotLeaderError
    from zraft.errors import ReadTimeout as ReadTimeout
    from zraft.errors import StorageFailedError as StorageFailedError
    from zraft.errors import UnknownOutcome as UnknownOutcome
    from zraft.errors import ZraftError as ZraftError
    from zraft.events import Event as Event
    from zraft.gc_tuning import tune_gc as tune_gc
    from zraft.kv import KV as KV
    from zraft.node import Node as Node
    from zraft.statemachine import StateMachine as StateMachine
    from zraft.statemachine import command as command
    from zraft.statemachine import query as query


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
