"""The durable "joining" marker of a re-provisioned node (see Raft.await_join)."""

from __future__ import annotations

from pathlib import Path

from zraft.storage import Storage


def test_join_marker_survives_reopen_and_clears(tmp_path: Path) -> None:
    with Storage.open(tmp_path) as st:
        assert st.joining() == (False, None)
        st.set_joining(None)
        assert st.joining() == (True, None), "waiting, index not known yet"
    with Storage.open(tmp_path) as st:
        assert st.joining() == (True, None)
        st.set_joining(42)
    with Storage.open(tmp_path) as st:
        assert st.joining() == (True, 42)
        st.clear_joining()
        st.clear_joining()  # idempotent
    with Storage.open(tmp_path) as st:
        assert st.joining() == (False, None)


def test_unreadable_marker_keeps_the_node_waiting(tmp_path: Path) -> None:
    (tmp_path / "joining").write_bytes(b"\xff garbage")
    with Storage.open(tmp_path) as st:
        assert st.joining() == (True, None), "never vote on a marker we cannot read"
