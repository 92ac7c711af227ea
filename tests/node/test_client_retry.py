"""How zraft.Client finds a node that can answer: hints, pauses, nodes that are down.

The fake nodes here are ROUTER sockets on loopback that answer from a script, and
the client's clock is replaced so pauses are recorded, not slept: what these tests
check is which node is asked next and how long the client would wait, not timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

import zraft
from zraft import client as client_mod
from zraft import codec
from zraft.errors import NotLeaderError, ReadTimeout
from zraft.launcher import free_ports
from zraft.protocol import ClientReply, ClientRequest

pytestmark = pytest.mark.process

Script = Callable[[ClientRequest], ClientReply]
#: how a request that ran out of time ends: the last answer's error, or UnknownOutcome
#: when its last attempt had left but its reply had not come by the deadline
_GAVE_UP = (NotLeaderError, zraft.BusyError, zraft.UnknownOutcome)


class FakeNode:
    """A ROUTER that answers each request with ``script(request)``; counts what it saw."""

    def __init__(self, script: Script) -> None:
        self.address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
        self.script, self.seen = script, 0
        self.identities: list[bytes] = []  # the routing id each request came from
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.address)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            identity, frame = self._sock.recv_multipart()
            self.identities.append(identity)
            for req in codec.decode_many(frame, "zraft"):
                assert isinstance(req, ClientRequest)
                self.seen += 1
                self._sock.send_multipart([identity, codec.encode(self.script(req), "zraft")])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class RecordedPauses:
    """Stands in for the client module's ``time``: a sleep is recorded and moves the
    client's clock on at once, so pauses count against its deadlines as they would."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic() + sum(self.pauses)

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> RecordedPauses:
    rec = RecordedPauses()
    monkeypatch.setattr(client_mod, "time", rec)
    return rec


@pytest.fixture
def fakes() -> Iterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for f in made:
        f.close()


def _ok(req: ClientRequest) -> ClientReply:
    return ClientReply(req.req_id, True, "done")


def _not_leader(hint: FakeNode | None) -> Script:
    def answer(req: ClientRequest) -> ClientReply:
        leader, address = ("L", hint.address) if hint else ("", "")
        return ClientReply(req.req_id, False, None, "not_leader", "", leader, address)

    return answer


def _dead_address() -> str:
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nobody listens there


def test_clients_choose_unguessable_routing_ids(fakes: list[FakeNode]) -> None:
    """A ROUTER's own ids count up from a known start: a caller claiming one (the ROUTER
    hands a routing id to whoever claims it last) would receive another client's replies."""
    node = FakeNode(_ok)
    fakes.append(node)
    for _ in range(2):
        with zraft.Client([node.address], timeout=5) as c:
            assert c.apply("noop") == "done"
    first, second = node.identities
    assert first != second and len(first) == len(second) == 16
    assert not first.startswith(b"\x00")  # not one the ROUTER assigned


def test_int_map_keys_are_refused_before_sending(fakes: list[FakeNode]) -> None:
    """A node drops such a frame whole (strict map keys): no answer would ever come."""
    node = FakeNode(_ok)
    fakes.append(node)
    with zraft.Client([node.address], timeout=5) as c:
        with pytest.raises(TypeError, match="map keys"):
            c.apply("put", "k", {1: "x"})
        with pytest.raises(TypeError, match="map keys"):
            c.apply_many([("put", ("a", 1)), ("put", ("b", [{2: "y"}]))])
        with pytest.raises(TypeError, match="map keys"):
            c.query("get", {(1, 2): 3})
        assert c.apply("put", "k", {"1": "x", b"2": [{"3": None}]}) == "done"
    assert node.seen == 1


@pytest.mark.parametrize("reconnects", [True, False])
def test_silence_from_a_connected_node_names_the_cluster_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reconnects: bool
) -> None:
    """A node drops a frame of another cluster unanswered: the only hint the caller gets.
    On a slow machine the later attempts may fail only to reconnect (the socket is reset
    after silence): the hint must still come from the earlier silence."""
    if not reconnects:
        send = client_mod.Client._send
        sends = iter(range(1 << 30))

        def send_once(
            self: zraft.Client, endpoint: str, data: bytes, by: float
        ) -> zmq.Socket[bytes]:
            if next(sends) > 0:
                raise client_mod._NotConnected(endpoint)
            return send(self, endpoint, data, by)

        monkeypatch.setattr(client_mod.Client, "_send", send_once)
    with zraft.Node(
        zraft.Config(
            node_id="solo",
            bind=(addr := f"tcp://127.0.0.1:{free_ports(1)[0]}"),
            peers={"solo": addr},
            data_dir=str(tmp_path / "solo"),
        )
    ) as node:
        node.wait_for_leader(timeout=20)
        c = zraft.Client([addr], cluster_id="other", timeout=1.5, attempt_timeout=0.5)
        with c, pytest.raises(zraft.UnknownOutcome, match="is cluster_id 'other' the nodes'"):
            c.apply("put", "k", 1)


def test_caller_mistakes_fail_at_once(fakes: list[FakeNode]) -> None:
    node = FakeNode(_ok)
    fakes.append(node)
    with pytest.raises(TypeError, match="client_id"):
        zraft.Client([node.address], client_id="text")  # type: ignore[arg-type]
    with zraft.Client([node.address], timeout=5, max_frame_bytes=1 << 16) as c:
        with pytest.raises(zraft.CommandFailed, match="max_frame_bytes"):
            c.apply("put", "k", b"x" * (1 << 16))  # a node's ZeroMQ would drop it unanswered
        assert c.apply("put", "k", b"x" * 100) == "done"
    assert node.seen == 1


def test_a_hint_to_another_node_is_followed_without_pausing(
    fakes: list[FakeNode], pauses: RecordedPauses
) -> None:
    leader = FakeNode(_ok)
    follower = FakeNode(_not_leader(leader))
    fakes += [leader, follower]
    with zraft.Client([follower.address], timeout=5) as c:
        assert c.apply("put", "k", 1) == "done"
    assert (follower.seen, leader.seen) == (1, 1)
    assert pauses.pauses == [], "a fresh leader hint costs no pause"


def test_no_leader_pauses_double_up_to_a_tenth_of_a_second(
    fakes: list[FakeNode], pauses: RecordedPauses
) -> None:
    """An election takes an election timeout; pauses that grew to 0.5 s kept clients idle
    for up to that long after a leader was up."""
    lost = FakeNode(_not_leader(None))
    fakes.append(lost)
    with zraft.Client([lost.address], timeout=0.5) as c, pytest.raises(_GAVE_UP):
        c.apply("put", "k", 1)
    p = pauses.pauses
    assert len(p) >= 5, p
    ceilings = [
        min(client_mod.RETRY_MIN_S * 2 ** min(i, 20), client_mod.RETRY_MAX_S) for i in range(len(p))
    ]
    # jittered to between half and all of the current step: herds of clients spread out
    # (the last pause may be cut short by the deadline)
    assert all(c / 2 <= x <= c for x, c in zip(p[:-1], ceilings, strict=False)), p
    assert max(p) <= client_mod.RETRY_MAX_S


def test_busy_pauses_grow_longer_than_not_leader_ones(
    fakes: list[FakeNode], pauses: RecordedPauses
) -> None:
    def busy(req: ClientRequest) -> ClientReply:
        return ClientReply(req.req_id, False, None, "busy", "queue full")

    node = FakeNode(busy)
    fakes.append(node)
    with zraft.Client([node.address], timeout=0.5) as c, pytest.raises(_GAVE_UP):
        c.apply("put", "k", 1)
    assert max(pauses.pauses) > client_mod.RETRY_MAX_S, pauses.pauses
    assert max(pauses.pauses) <= client_mod.BUSY_MAX_S


def test_hints_that_go_round_in_a_circle_still_pause(
    fakes: list[FakeNode], pauses: RecordedPauses
) -> None:
    """Two nodes naming each other (stale hints during an election) must not make the
    client spin: at most one unpaused hop between two pauses."""
    a = FakeNode(_ok)  # replaced below: each names the other
    b = FakeNode(_not_leader(a))
    a.script = _not_leader(b)
    fakes += [a, b]
    with zraft.Client([a.address], timeout=0.3) as c, pytest.raises(_GAVE_UP):
        c.apply("put", "k", 1)
    asked = a.seen + b.seen
    assert asked <= 2 * len(pauses.pauses) + 2, (asked, len(pauses.pauses))


def test_a_down_node_costs_one_connect_wait_not_an_attempt_timeout(
    fakes: list[FakeNode], pauses: RecordedPauses
) -> None:
    """The first endpoint is down: the request goes on to the next one after
    CONNECT_WAIT_S, and later attempts pass over it without waiting."""
    leader = FakeNode(_ok)
    fakes.append(leader)
    dead = _dead_address()
    with zraft.Client([dead, leader.address], timeout=30, attempt_timeout=20) as c:
        t0 = time.monotonic()
        assert c.apply("put", "k", 1) == "done"
        first_s = time.monotonic() - t0
        c._current = 0  # start from the dead node again
        t0 = time.monotonic()
        assert c.apply("put", "k", 2) == "done"
        again_s = time.monotonic() - t0
    assert first_s < 5, first_s  # not attempt_timeout (20 s)
    assert again_s < first_s, (again_s, first_s)
    assert leader.seen == 2
    assert pauses.pauses == [], "a node that is down is passed over, not paused for"


def test_a_cluster_that_is_all_down_is_a_timeout_that_applied_nothing(
    pauses: RecordedPauses,
) -> None:
    """Nothing could be sent, so nothing can have been applied: ReadTimeout, not
    UnknownOutcome; and the client paused between rounds instead of spinning."""
    with (
        zraft.Client([_dead_address(), _dead_address()], timeout=1.0) as c,
        pytest.raises(ReadTimeout) as err,
    ):
        c.apply("put", "k", 1)
    assert not isinstance(err.value, zraft.UnknownOutcome)
    assert "could not connect" in str(err.value)
    assert pauses.pauses, "rounds over nodes that are all down are paced"


def test_a_real_node_behind_a_dead_endpoint_answers_within_a_connect_wait(
    tmp_path: Path,
) -> None:
    addr = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    cfg = zraft.Config(node_id="solo", bind=addr, peers={"solo": addr}, data_dir=str(tmp_path))
    with zraft.Node(cfg) as node:
        deadline = time.monotonic() + 30
        while node.status()["role"] != "leader" and time.monotonic() < deadline:
            time.sleep(0.02)  # process-level: wait for the single node to elect itself
        with zraft.Client([_dead_address(), addr], timeout=30, attempt_timeout=20) as c:
            t0 = time.monotonic()
            c.apply("put", "k", "v")
            took_s = time.monotonic() - t0
            assert c.query("get", "k") == "v"
    assert took_s < 5, took_s  # one CONNECT_WAIT_S, not the 20 s attempt timeout
