"""Fixed-size histograms for what an operator asks first: how long fsyncs and turns take.

Log-2 buckets over non-negative integers (microseconds for durations, entries for
batch sizes): constant memory, one list increment per observation, and
percentiles good to a factor of two, which is what tail hunting needs. Bucket
counts can be subtracted, so a reader that samples twice gets the window between.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: bucket k holds values v with 2**(k-1) <= v < 2**k (bucket 0 holds 0); the last
#: bucket takes everything above, so no observation is ever dropped
BUCKETS = 40


class Histogram:
    """Counts of observations in log-2 buckets, plus their count, sum and maximum.

    Not thread-safe: each histogram has one writer (the thread that owns it).
    """

    __slots__ = ("counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0  #: sum of observations
        self.max = 0

    def observe(self, value: int) -> None:
        """Record one observation (negative values count as 0: clocks are not ours)."""
        v = value if value > 0 else 0
        self.counts[bucket_of(v)] += 1
        self.total += v
        if v > self.max:
            self.max = v

    def add(self, other: Histogram) -> None:
        """Fold ``other``'s observations into this one (``other`` may be another thread's:
        a racing observation is counted now or next time, never torn into a bad state)."""
        self.counts = [a + b for a, b in zip(self.counts, list(other.counts), strict=True)]
        self.total += other.total
        self.max = max(self.max, other.max)

    def count(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> int:
        """An upper bound for the ``q`` quantile (0 < q <= 1): the top of its bucket,
        capped at the largest value seen; 0 when empty."""
        assert 0 < q <= 1, q
        n = self.count()
        if n == 0:
            return 0
        rank = max(1, math.ceil(q * n - 1e-9))  # nearest rank: never below the true one
        seen = 0
        for k, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.max if k == BUCKETS - 1 else min(upper_bound(k), self.max)
        raise AssertionError("unreachable: the ranks add up to the count")

    def summary(self, scale: float = 1.0, unit: str = "") -> dict[str, Any]:
        """Count, mean, p50/p90/p99 and max, each divided by ``scale`` and named with
        ``unit`` (``summary(1000, "ms")`` for microsecond durations); unscaled, the
        ``total`` and the buckets as ``[[upper bound, count], ...]`` (non-empty ones),
        from which :func:`window` recovers what happened between two summaries."""
        n = self.count()
        sfx = f"_{unit}" if unit else ""

        def scaled(v: float) -> float:
            return round(v / scale, 3)

        return {
            "count": n,
            f"mean{sfx}": scaled(self.total / n) if n else 0.0,
            f"p50{sfx}": scaled(self.percentile(0.5)),
            f"p90{sfx}": scaled(self.percentile(0.9)),
            f"p99{sfx}": scaled(self.percentile(0.99)),
            f"max{sfx}": scaled(self.max),
            "total": self.total,
            "buckets": [[upper_bound(k), c] for k, c in enumerate(self.counts) if c],
        }


def bucket_of(value: int) -> int:
    """The bucket a non-negative ``value`` falls in (an upper bound maps to its own)."""
    k = value.bit_length()
    return k if k < BUCKETS else BUCKETS - 1


def upper_bound(bucket: int) -> int:
    """The largest value bucket ``bucket`` holds (the last one's is open-ended)."""
    return (1 << bucket) - 1 if bucket else 0


def window(before: Mapping[str, Any], after: Mapping[str, Any]) -> Histogram:
    """The observations between two :meth:`Histogram.summary` readings of one histogram.

    Counts and total are exact; the maximum is its bucket's upper bound. A histogram
    that was reset in between (a reopened log) never yields negative counts.
    """
    out = Histogram()
    for summary, sign in ((after, 1), (before, -1)):
        for bound, c in summary.get("buckets", []):
            out.counts[bucket_of(int(bound))] += sign * int(c)
    out.counts = [max(0, c) for c in out.counts]
    out.total = max(0, int(after.get("total", 0)) - int(before.get("total", 0)))
    top = max((k for k, c in enumerate(out.counts) if c), default=0)
    out.max = upper_bound(top) if top < BUCKETS - 1 else 1 << 62
    return out
