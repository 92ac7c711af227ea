"""CURVE: known keys talk; unknown or missing keys get nothing; no key speaks for another node."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from wire_helpers import (
    LOCAL_ANY,
    client_reply,
    client_socket,
    context,
    deliver,
    poll_until,
    recv_some,
)

from zraft.codec import encode
from zraft.core.types import AppendResponse, Heartbeat
from zraft.protocol import ClientReply, ClientRequest
from zraft.security import (
    CurveSetup,
    client_curve_options,
    generate_keypair,
    load_keypair,
    load_public_key,
)
from zraft.transport import Transport

CID = "curve-test"
NO_REPLY_WAIT_S = 1.0  # bounded wait that proves "gets nothing"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A temp dir removed when the test ends (keys are secrets: don't leave them around)."""
    with tempfile.TemporaryDirectory(prefix="zraft-wire-") as name:
        yield Path(name)


@pytest.fixture
def keys(tmp_dir: Path) -> Path:
    tmp_path = tmp_dir
    root = tmp_path / "keys"
    for node in ("n1", "n2", "n3"):
        generate_keypair(root, node)
    generate_keypair(root / "clients", "alice")
    generate_keypair(tmp_path / "elsewhere", "mallory")
    return root


@pytest.fixture
def n1(keys: Path) -> Iterator[Transport]:
    with context() as ctx:
        t = Transport(ctx, "n1", LOCAL_ANY, {}, CID, curve=CurveSetup.from_dir(keys, "n1"))
        yield t
        t.close()


def options(keys: Path, secret_file: Path) -> dict[int, bytes]:
    return client_curve_options(load_public_key(keys / "n1.key"), load_keypair(secret_file))


def test_generate_keypair_writes_public_and_private_secret(tmp_dir: Path) -> None:
    public, secret = generate_keypair(tmp_dir / "k", "n9")
    assert public == tmp_dir / "k" / "n9.key" and secret == tmp_dir / "k" / "n9.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pub, sec = load_keypair(secret)
    assert load_public_key(public) == pub and len(sec) == 40
    with pytest.raises(ValueError):
        load_keypair(public)


def test_a_missing_key_file_is_named_with_how_to_make_it(tmp_dir: Path) -> None:
    from zraft.security import load_keypair, load_public_key

    for load in (load_keypair, load_public_key):
        with pytest.raises(FileNotFoundError, match=r"clients/<name>\.key_secret") as missing:
            load(tmp_dir / "clients" / "client.key_secret")
        assert str(tmp_dir / "clients" / "client.key_secret") in str(missing.value)


def test_curve_setup_from_dir_maps_keys_to_ids(keys: Path) -> None:
    setup = CurveSetup.from_dir(keys, "n2")
    assert setup.public_key == load_public_key(keys / "n2.key")
    assert sorted(setup.peer_keys.values()) == ["n1", "n2", "n3"]
    assert setup.peer_key("n3") == load_public_key(keys / "n3.key")
    assert setup.peer_key("n4") is None
    alice = load_public_key(keys / "clients" / "alice.key")
    assert setup.user_id(alice) == "client:alice"
    assert setup.user_id(load_public_key(keys / "n1.key")) == "n1"
    only = CurveSetup.from_dir(keys, "n2", peer_ids=["n1"])
    assert sorted(only.peer_keys.values()) == ["n1", "n2"]
    with pytest.raises(OSError):
        CurveSetup.from_dir(keys, "n7")


def test_two_curve_nodes_talk(keys: Path) -> None:
    with context() as ctx1, context() as ctx2:
        a = Transport(ctx1, "n1", LOCAL_ANY, {}, CID, curve=CurveSetup.from_dir(keys, "n1"))
        b = Transport(
            ctx2, "n2", LOCAL_ANY, {"n1": a.endpoint}, CID, curve=CurveSetup.from_dir(keys, "n2")
        )
        try:
            a.set_peers({"n2": b.endpoint})
            identity, _ = deliver(a, b, Heartbeat(1, "n1", "n2", 0))
            assert identity.partition(b"\x00")[0] == b"n1"  # then 8 random bytes
            deliver(b, a, AppendResponse(1, "n2", "n1", 0))
        finally:
            a.close()
            b.close()


def test_authorized_client_gets_reply(n1: Transport, keys: Path) -> None:
    with context() as cctx:
        client = client_socket(
            cctx, n1.endpoint, **_opts(options(keys, keys / "clients" / "alice.key_secret"))
        )
        client.send(encode(ClientRequest(1, "status"), CID))
        [(identity, req)] = recv_some(n1)
        assert req == ClientRequest(1, "status")
        n1.reply(identity, ClientReply(1, True, result="fine"))
        assert client_reply(client, CID) == ClientReply(1, True, result="fine")
        client.close()


@pytest.mark.parametrize("who", ["no_key", "unknown_key"])
def test_client_without_authorized_key_gets_nothing(n1: Transport, keys: Path, who: str) -> None:
    opts: dict[str, Any] = {}
    if who == "unknown_key":
        opts = _opts(options(keys, keys.parent / "elsewhere" / "mallory.key_secret"))
    with context() as cctx:
        client = client_socket(cctx, n1.endpoint, **opts)
        client.send(encode(ClientRequest(1, "status"), CID))
        assert recv_some(n1, 1, timeout_s=NO_REPLY_WAIT_S) == []
        assert client_reply(client, CID, timeout_s=0.1) is None
        assert n1.stats()["received"] == 0
        client.close()


def test_peer_key_speaking_as_another_node_is_dropped(n1: Transport, keys: Path) -> None:
    with context() as cctx:
        n2_key = _opts(options(keys, keys / "n2.key_secret"))
        alice_key = _opts(options(keys, keys / "clients" / "alice.key_secret"))
        as_n3 = client_socket(cctx, n1.endpoint, routing_id=b"n3", **n2_key)
        alice_as_n2 = client_socket(cctx, n1.endpoint, routing_id=b"n2", **alice_key)
        as_n3.send(encode(Heartbeat(1, "n3", "n1", 0), CID))
        alice_as_n2.send(encode(Heartbeat(1, "n2", "n1", 0), CID))
        assert poll_until(lambda: not n1.recv() and n1.stats()["bad_dropped"] == 2)
        assert n1.stats()["received"] == 0
        alice_as_n2.close()
        honest = client_socket(cctx, n1.endpoint, routing_id=b"n2", **n2_key)
        honest.send(encode(Heartbeat(1, "n2", "n1", 7), CID))
        assert recv_some(n1) == [(b"n2", Heartbeat(1, "n2", "n1", 7))]
        for s in (as_n3, honest):
            s.close()


def _opts(by_number: dict[int, bytes]) -> dict[str, Any]:
    """client_curve_options keyed by option name, for client_socket(**opts)."""
    names: dict[int, str] = {
        zmq.CURVE_SERVERKEY: "curve_serverkey",
        zmq.CURVE_PUBLICKEY: "curve_publickey",
        zmq.CURVE_SECRETKEY: "curve_secretkey",
    }
    return {names[k]: v for k, v in by_number.items()}
