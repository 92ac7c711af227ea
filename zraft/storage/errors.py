"""Errors the storage raises; the node decides from the class whether to start."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every storage error."""


class CorruptLog(StorageError):
    """Durable data is damaged; the node must not start (see :func:`zraft.storage.repair`).

    The message always names the file and, where it applies, the byte offset.
    """

    def __init__(self, message: str, *, path: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class CorruptHardState(CorruptLog):
    """The hard-state file fails its checksum or does not parse."""


class CorruptSnapshot(CorruptLog):
    """A snapshot file's bytes do not match the size/crc32 of its metadata."""


class StorageFailed(StorageError):
    """A write hit an I/O error (e.g. ENOSPC); the storage is read-only until recovered."""


class AlreadyBootstrapped(StorageError):
    """bootstrap() was called on a data dir that already holds state."""


class RecordTooLarge(StorageError, ValueError):
    """An entry's record exceeds max_record_bytes; nothing of the batch was written."""


class DataDirLocked(StorageError):
    """Another Storage (maybe in another process) holds this data dir open."""


class DataDirMismatch(StorageError):
    """The data dir belongs to another node or cluster (or says so in a damaged file).

    Starting on it would make this node vote and acknowledge with another's memory."""
