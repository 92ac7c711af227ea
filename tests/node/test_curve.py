"""CURVE at process level: without the right key a client gets nothing; with it, it works."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from zraft import codec
from zraft.cli import main as zraft_main
from zraft.client import Client
from zraft.errors import ZraftError
from zraft.launcher import LocalCluster
from zraft.protocol import ClientRequest

pytestmark = pytest.mark.process


def test_curve_cluster_serves_keyed_clients_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert (
        zraft_main(
            [
                "keygen",
                str(keys),
                "--name",
                "n1",
                "--name",
                "n2",
                "--name",
                "n3",
                "--client",
                "admin",
            ]
        )
        == 0
    )
    assert zraft_main(["keygen", str(tmp_path / "other"), "--client", "mallory"]) == 0
    with LocalCluster(
        3, base_dir=tmp_path / "c", curve_keys=str(keys), curve_client="admin"
    ) as cluster:
        cluster.wait_for_leader(timeout=30)
        with cluster.client(timeout=30, client_name="admin") as good:
            good.apply("put", "secret", 42)
            assert good.query("get", "secret") == 42
        ids = {n.node_id: n.address for n in cluster.nodes.values()}
        # a client with a key the cluster does not know: encrypted, but refused
        with Client(
            ids, curve_keys=str(tmp_path / "other"), client_name="mallory", timeout=3
        ) as stranger:
            stranger._curve_dir = keys  # it knows the servers' public keys, not a trusted key
            with pytest.raises(ZraftError):
                stranger.query("get", "secret")
        # no CURVE at all: plain ZMTP against a CURVE server gets nothing back
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(cluster.endpoints[0])
        plain.send(codec.encode(ClientRequest(1, "query", "get", ("secret",)), "zraft"))
        started = time.monotonic()
        assert plain.poll(2000) == 0, "an unauthenticated client got an answer"
        assert time.monotonic() - started >= 1.9
        plain.close()
