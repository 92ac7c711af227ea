"""A data dir belongs to one node of one cluster: swapped volumes must not start."""

from __future__ import annotations

from pathlib import Path

import pytest

from zraft.core.types import Membership
from zraft.storage import DataDirMismatch, Storage


def test_the_first_claim_binds_the_dir_and_later_ones_must_match(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        st.claim("n1", "prod")
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:1"}))
        st.claim("n1", "prod")  # the same node again: fine
    with Storage.open(data_dir) as st:
        st.claim("n1", "prod")  # survives a reopen
        with pytest.raises(DataDirMismatch, match="belongs to node 'n1' of cluster 'prod'"):
            st.claim("n2", "prod")
        with pytest.raises(DataDirMismatch, match="not node 'n1' of cluster 'test'"):
            st.claim("n1", "test")


def test_a_damaged_identity_file_is_refused_with_the_fix(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        st.claim("n1", "prod")
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:1"}))
    (data_dir / "identity").write_bytes(b'{"node_id": "n1", "clust')
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch, match="is damaged") as err:
        st.claim("n1", "prod")
    assert '{"node_id": "n1", "cluster_id": "prod"}' in str(err.value)


def test_a_first_start_with_a_wrong_setting_is_undone_by_starting_right(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        st.claim("n1", "typo")  # refused elsewhere (say a port in use): no state written
    with Storage.open(data_dir) as st:
        st.claim("n1", "prod")
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:1"}))
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch):
        st.claim("n1", "typo")  # now it holds state: no longer


def test_a_dir_from_before_identity_files_must_name_us_in_its_membership(
    data_dir: Path,
) -> None:
    with Storage.open(data_dir) as st:  # written by an earlier version: no identity file
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:1", "n2": "tcp://127.0.0.1:2"}))
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch, match="not include 'n3'"):
        st.claim("n3", "prod")
    assert not (data_dir / "identity").exists()
    with Storage.open(data_dir) as st:
        st.claim("n2", "prod")
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch):
        st.claim("n1", "prod")  # claimed by n2 from here on


def test_an_empty_identity_file_is_no_free_pass(data_dir: Path) -> None:
    """With fsync off a crash can leave the file empty: the membership check still runs."""
    with Storage.open(data_dir) as st:
        st.bootstrap(Membership(voters={"n1": "tcp://127.0.0.1:1"}))
    (data_dir / "identity").write_bytes(b"")
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch, match="not include 'n9'"):
        st.claim("n9", "other")
