"""The hard-state file: term, vote and the bootstrap membership, replaced atomically."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from zraft.core.types import HardState, Membership
from zraft.storage.errors import CorruptHardState
from zraft.storage.fileutil import atomic_write

FILE_NAME = "hardstate"
_MAGIC = b"ZRHARD01"
_HEAD = struct.Struct("<8sII")  # magic, crc32 of the payload, payload length
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Persisted:
    hard_state: HardState
    bootstrap: Membership | None


def encode(p: Persisted) -> bytes:
    body = {
        "term": p.hard_state.term,
        "vote": p.hard_state.vote,
        "bootstrap": None if p.bootstrap is None else json.loads(p.bootstrap.encode()),
    }
    payload = json.dumps(body, sort_keys=True).encode()
    assert len(payload) < MAX_FILE_BYTES
    return _HEAD.pack(_MAGIC, zlib.crc32(payload), len(payload)) + payload


def load(directory: Path) -> Persisted | None:
    """The stored hard state, None if there is none; damage raises CorruptHardState."""
    path = directory / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEAD.size or len(data) > MAX_FILE_BYTES:
        raise CorruptHardState(f"{path}: hard-state file has bad size {len(data)}", path=str(path))
    magic, crc, size = _HEAD.unpack_from(data)
    payload = data[_HEAD.size :]
    if magic != _MAGIC or size != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptHardState(
            f"{path}: hard-state file fails its checksum (offset 0); refusing to guess"
            " term/vote, restore it from a backup or re-provision this node",
            path=str(path),
            offset=0,
        )
    try:
        raw = json.loads(payload)
        term, vote, boot = raw["term"], raw["vote"], raw["bootstrap"]
        if not isinstance(term, int) or term < 0 or not isinstance(vote, str):
            raise ValueError("term must be a non-negative int and vote a str")
        member = None if boot is None else Membership.decode(json.dumps(boot).encode())
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptHardState(
            f"{path}: hard-state file does not parse: {err}", path=str(path)
        ) from err
    return Persisted(HardState(term, vote), member)


def store(directory: Path, p: Persisted, *, durable: bool) -> None:
    atomic_write(directory / FILE_NAME, encode(p), durable=durable)
