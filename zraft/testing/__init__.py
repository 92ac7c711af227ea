"""Testing support shipped with zraft: the cluster simulator, history recording, checkers."""
