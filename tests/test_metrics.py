"""zraft.metrics: log-2 histograms whose percentiles are upper bounds within 2x."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zraft.metrics import BUCKETS, Histogram, upper_bound, window


def filled(values: list[int]) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


def test_percentiles_are_the_top_of_the_bucket_capped_at_the_max() -> None:
    h = filled(list(range(1, 1001)))
    assert h.count() == 1000 and h.total == 500500 and h.max == 1000
    assert h.percentile(0.5) == 511  # 500 lies in [256, 511]
    assert h.percentile(0.9) == 1000  # 900 lies in [512, 1023]; nothing above 1000 was seen
    assert h.percentile(0.01) == 15  # the 10th value lies in [8, 15]


def test_p99_of_160_is_the_159th_value() -> None:
    """Nearest rank rounds up: two outliers in 160 samples are inside p99, not below it."""
    h = filled([1] * 158 + [5000, 5000])
    assert h.percentile(0.99) == 5000


def test_empty_zero_negative_and_huge_values() -> None:
    assert Histogram().percentile(0.99) == 0
    h = filled([-5, 0, 1 << 60])
    assert h.counts[0] == 2, "negative counts as zero"
    assert h.counts[BUCKETS - 1] == 1, "the last bucket is open-ended: nothing dropped"
    assert h.percentile(1.0) == 1 << 60
    with pytest.raises(AssertionError):
        h.percentile(0)


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=300), st.floats(0.01, 1.0))
def test_a_percentile_bounds_the_true_one_within_a_factor_of_two(
    values: list[int], q: float
) -> None:
    h = filled(values)
    true = sorted(values)[max(1, math.ceil(q * len(values) - 1e-9)) - 1]  # nearest rank
    got = h.percentile(q)
    assert true <= got <= max(1, 2 * true) and got <= max(values)


def test_summary_scales_and_names_units() -> None:
    s = filled([1000, 3000]).summary(1000, "ms")
    assert s["count"] == 2 and s["mean_ms"] == 2.0 and s["max_ms"] == 3.0
    assert s["p50_ms"] == 1.023 and s["p99_ms"] == 3.0
    assert s["buckets"] == [[upper_bound(10), 1], [upper_bound(12), 1]] and s["total"] == 4000
    assert Histogram().summary()["mean"] == 0.0


def test_a_window_is_what_was_observed_between_two_readings() -> None:
    h = filled([3, 100])
    before = h.summary(1000, "ms")
    for v in (5, 6, 2000):
        h.observe(v)
    after = h.summary(1000, "ms")
    w = window(before, after)
    assert w.count() == 3 and w.total == 2011, "counts and total are exact"
    assert w.percentile(0.5) == 7 and w.percentile(1.0) == 2047
    assert window(after, before).count() == 0, "a reset never counts negative"
    assert window({}, after).count() == 5


def test_add_folds_another_histogram_in() -> None:
    a, b = filled([1, 2]), filled([1000])
    a.add(b)
    assert a.count() == 3 and a.max == 1000 and a.total == 1003
