"""CURVE security: key files, who is who, and the ZAP authenticator.

Why: a plain ROUTER accepts anyone and any claimed routing id. With CURVE on,
every connection is encrypted and authenticated, the ZAP handler admits only
known public keys, and it stamps each connection with a User-Id -- the node id
for a peer key, ``client:<name>`` for a client key -- so the transport can check
that a Raft message's ``frm`` is the node whose key signed the connection.

Keys directory layout (what :meth:`CurveSetup.from_dir` reads)::

    keys/
      n1.key          public key of node n1 (every node has every node's .key)
      n1.key_secret   n1's secret key (only on n1's machine)
      n2.key
      ...
      clients/
        alice.key     an authorized client; its User-Id is "client:alice"

Create keys with :func:`generate_keypair` (``zraft keygen DIR --name n1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

#: ZAP domain zraft ROUTERs authenticate in.
ZAP_DOMAIN = "zraft"
#: User-Id prefix for authenticated clients (peers get their bare node id).
CLIENT_USER_PREFIX = "client:"
#: Bound on keys loaded from a directory.
MAX_KEYS = 4096


def generate_keypair(
    directory: str | os.PathLike[str], name: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` (0600) into ``directory``.

    Refuses (FileExistsError) to replace an existing pair unless ``overwrite``: a node
    whose secret changed fails authentication on its next start."""
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise ValueError(f"a key name is a plain file name, not {name!r}")
    Path(directory).mkdir(parents=True, exist_ok=True)
    paths = [Path(directory) / f"{name}.key", Path(directory) / f"{name}.key_secret"]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exists (--force replaces it)")
    old_umask = os.umask(0o077)  # the secret is never readable by others, not even briefly
    try:
        public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    finally:
        os.umask(old_umask)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _require_file(path: str | os.PathLike[str]) -> None:
    """pyzmq says "Invalid certificate file" for a file that is not there at all."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no key file {os.fspath(path)} (`zraft keygen DIR --name ID --client NAME`"
            " makes them; a client's is clients/<name>.key_secret, <name> from"
            " --client-name, default 'client')"
        )


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The z85 public key of a ``.key`` or ``.key_secret`` file."""
    _require_file(path)
    public, _ = zmq.auth.load_certificate(path)
    return public


def load_keypair(secret_path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file."""
    _require_file(secret_path)
    public, secret = zmq.auth.load_certificate(secret_path)
    if secret is None:
        raise ValueError(f"{secret_path} holds no secret key")
    return public, secret


def client_curve_options(
    server_public_key: bytes, client_keypair: tuple[bytes, bytes]
) -> dict[int, bytes]:
    """Socket options a client sets (``sock.setsockopt(k, v)``) before connecting to a node."""
    public, secret = client_keypair
    return {
        zmq.CURVE_SERVERKEY: server_public_key,
        zmq.CURVE_PUBLICKEY: public,
        zmq.CURVE_SECRETKEY: secret,
    }


@dataclass(frozen=True)
class CurveSetup:
    """This node's keypair and who may talk to it. Keys are z85 (40-byte) bytes."""

    public_key: bytes
    secret_key: bytes
    #: public key -> node id, for peers (this node's own key may be in it)
    peer_keys: Mapping[bytes, str] = field(default_factory=dict)
    #: public key -> client name, for authorized clients
    client_keys: Mapping[bytes, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert len(self.public_key) == 40 and len(self.secret_key) == 40, "z85 keys"
        assert not (self.peer_keys.keys() & self.client_keys.keys()), "a key is peer or client"

    def peer_key(self, node_id: str) -> bytes | None:
        """The public key of ``node_id``, for connecting to it as a CURVE client."""
        for key, nid in self.peer_keys.items():
            if nid == node_id:
                return key
        return None

    def user_id(self, public_key: bytes) -> str | None:
        """The User-Id ZAP assigns to a connection with this key, None if not admitted."""
        if public_key in self.peer_keys:
            return self.peer_keys[public_key]
        name = self.client_keys.get(public_key)
        return None if name is None else CLIENT_USER_PREFIX + name

    @classmethod
    def from_dir(
        cls,
        keys_dir: str | os.PathLike[str],
        node_id: str,
        *,
        peer_ids: Iterable[str] | None = None,
    ) -> CurveSetup:
        """Load the layout described in the module docstring.

        Peers are every ``*.key`` in ``keys_dir`` (or only ``peer_ids`` if given),
        so a node added later is known as soon as its public key file is there.
        """
        root = Path(keys_dir)
        public, secret = load_keypair(root / f"{node_id}.key_secret")
        if peer_ids is None:
            peer_files = sorted(root.glob("*.key"))
        else:
            peer_files = [root / f"{p}.key" for p in peer_ids]
        client_dir = root / "clients"
        client_files = sorted(client_dir.glob("*.key")) if client_dir.is_dir() else []
        if len(peer_files) + len(client_files) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} keys in {root}")
        peers = _keys_by_name(peer_files)
        peers[public] = node_id
        clients = _keys_by_name(client_files)
        if peers.keys() & clients.keys():
            raise ValueError("a public key is both a node's and a client's")
        return cls(public, secret, peers, clients)


def _keys_by_name(files: Iterable[Path]) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    for path in files:
        key = load_public_key(path)
        if key in out and out[key] != path.stem:
            raise ValueError(f"{path} reuses the key of {out[key]}")
        out[key] = path.stem
    return out


class _KeyChecker:
    """pyzmq credentials provider: admit exactly the keys the setup knows."""

    def __init__(self, setup: CurveSetup) -> None:
        self._setup = setup

    def callback(self, domain: str, key: bytes) -> bool:
        return self._setup.user_id(key) is not None


class CurveAuthenticator(ThreadAuthenticator):
    """ZAP handler thread that admits known keys and names them (User-Id)."""

    def __init__(self, ctx: zmq.Context[Any], setup: CurveSetup) -> None:
        super().__init__(ctx)
        self._setup = setup

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called only for keys the checker admitted; never raise in the ZAP thread
        # (it would stop all authentication), an empty User-Id matches nobody.
        user = self._setup.user_id(z85.encode(client_public_key))
        return "" if user is None else user


def start_authenticator(ctx: zmq.Context[Any], setup: CurveSetup) -> CurveAuthenticator:
    """Start the ZAP handler on ``ctx``. One per context: bind this before any CURVE server.

    Without a ZAP handler libzmq admits *any* CURVE key, so a transport must
    start this first.
    """
    auth = CurveAuthenticator(ctx, setup)
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_KeyChecker(setup))
    auth.start()
    return auth
