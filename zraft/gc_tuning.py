"""Cyclic garbage-collector settings for a process that hosts a node."""

from __future__ import annotations

import gc

#: net allocations of container objects between young collections (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic collector's pauses out of the node's turns; call once, after start-up.

    With CPython's defaults (700, 10, 10) a full collection comes about every 70,000 net
    allocations of containers and walks every tracked object: the modules, functions and
    classes loaded at start-up, and all the application keeps. In the embedded bench, with
    thousands of commands in flight in one process, that was 16 full passes of ~56 ms in
    12 s (1.9 s of the 12 in the collector in all), each a stall for every request.

    This collects once, freezes what is alive into a generation the collector never walks,
    and sets (10,000, 20, 20): young passes every 10,000 allocations, full ones at most
    every ~4 million. The node's own garbage is acyclic, freed by reference counting.

    The settings are process-wide: the application's own garbage cycles wait longer too,
    and an object alive now that later becomes part of a cycle is never freed, nor what
    it references. ``zraft run`` calls this in every node process. Written for the
    generational collector of CPython 3.11-3.13; an incremental one reads the thresholds
    differently.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
