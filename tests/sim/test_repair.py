"""A follower whose damaged log suffix was discarded (zraft repair) catches up again.

Raft assumes acknowledged entries are never lost. After an operator repair they are:
the leader still counts them as matched. The follower reports where its log really
ends (AppendResponse with index 0) and the leader sends the entries again.
"""

from __future__ import annotations

from zraft.testing.sim import Cluster


def test_repaired_follower_is_resent_the_entries_it_lost() -> None:
    c = Cluster(3, seed=7)
    leader = c.wait_leader()
    for i in range(40):
        c.propose(b"v%d" % i)
    c.settle()
    follower = next(n for n in c.nodes if n != leader)
    last = c.core(leader).last_index
    assert c.nodes[follower].storage.last_index() == last
    # the repair: crash, then cut the follower's durable log back to index 10
    c.crash(follower)
    storage = c.nodes[follower].storage
    storage._ents = storage._ents[: 10 - storage._ents[0].index + 1]
    assert storage.last_index() == 10
    c.restart(follower)
    caught_up = c.run_until(lambda: c.nodes[follower].storage.last_index() == last, 60)
    assert caught_up, "the leader never resent the entries the follower lost"
    assert c.core(leader).lost_reports >= 1
    c.propose(b"after")
    c.settle()
    c.check_final()
