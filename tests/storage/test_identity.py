"""A data dir belongs to one node of one cluster: swapped volumes must not start."""

from __future__ import annotations

from pathlib import Path

import pytest

from zraft.storage import DataDirMismatch, Storage


def test_the_first_claim_binds_the_dir_and_later_ones_must_match(data_dir: Path) -> None:
    with Storage.open(data_dir) as st:
        st.claim("n1", "prod")
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
    (data_dir / "identity").write_bytes(b'{"node_id": "n1", "clust')
    with Storage.open(data_dir) as st, pytest.raises(DataDirMismatch, match="is damaged") as err:
        st.claim("n1", "prod")
    assert '{"node_id": "n1", "cluster_id": "prod"}' in str(err.value)
