"""Percentiles from the per-day histograms (selectors.quantile): as Prometheus'
histogram_quantile estimates them, linear within the bucket that holds the rank."""

from __future__ import annotations

import pytest

from chat.models import TTFT_BUCKETS_MS, bucket_field, bucket_fields
from chat.selectors import quantile

BOUNDS = (100, 200, 400)


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([0, 0, 0, 0], 0.5, None),  # nothing counted
        ([10, 0, 0, 0], 0.5, 50.0),  # half way into the first bucket, from 0
        ([0, 4, 0, 0], 0.5, 150.0),
        ([0, 4, 0, 0], 1.0, 200.0),
        ([5, 5, 0, 0], 0.5, 100.0),  # the rank falls on a bucket's edge
        ([5, 5, 0, 0], 0.75, 150.0),
        ([1, 0, 2, 1], 0.5, 300.0),  # empty buckets are skipped, not interpolated through
        ([0, 0, 0, 3], 0.5, 400.0),  # above every bound: the top bound, a lower bound
    ],
)
def test_quantile(counts: list[int], q: float, expected: float | None) -> None:
    assert quantile(counts, BOUNDS, q) == expected


def test_each_value_has_one_column() -> None:
    columns = bucket_fields("ttft", TTFT_BUCKETS_MS)
    assert bucket_field("ttft", TTFT_BUCKETS_MS, 0) == columns[0]
    assert bucket_field("ttft", TTFT_BUCKETS_MS, 100) == "ttft_le_100"
    assert bucket_field("ttft", TTFT_BUCKETS_MS, 100.5) == "ttft_le_250"
    assert bucket_field("ttft", TTFT_BUCKETS_MS, 10_000.1) == columns[-1] == "ttft_over_10000"
    from chat.models import UsageDay

    fields = {f.name for f in UsageDay._meta.get_fields()}
    assert set(columns) <= fields
