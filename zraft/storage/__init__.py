"""Durable storage: a segmented, checksummed log, hard state and snapshot files.

Entry points: :meth:`Storage.open` for the node, :func:`repair` for the operator.
"""

from zraft.storage.errors import (
    AlreadyBootstrapped,
    CorruptHardState,
    CorruptLog,
    CorruptSnapshot,
    DataDirLocked,
    DataDirMismatch,
    RecordTooLarge,
    StorageError,
    StorageFailed,
)
from zraft.storage.repair import RepairReport, repair
from zraft.storage.storage import Storage

__all__ = [
    "AlreadyBootstrapped",
    "CorruptHardState",
    "CorruptLog",
    "CorruptSnapshot",
    "DataDirLocked",
    "DataDirMismatch",
    "RecordTooLarge",
    "RepairReport",
    "Storage",
    "StorageError",
    "StorageFailed",
    "repair",
]
