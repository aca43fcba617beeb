"""Latency histograms: the native recorder against the Python model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onvm import _hooks, _native, latency


def model_record(rx: list[int], now: int) -> dict:
    buckets = [0] * latency.LAT_BUCKETS
    total = mx = 0
    for r in rx:
        d = max(now - r, 0)
        buckets[latency.bucket(d)] += 1
        total += d
        mx = max(mx, d)
    return {"count": len(rx), "sum_ns": total, "max_ns": mx, "buckets": tuple(buckets)}


def test_constants_agree():
    assert _native.LAT_BUCKETS == latency.LAT_BUCKETS


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_native_bucket_matches_model(ns):
    assert _hooks.lat_bucket(ns) == latency.bucket(ns)


@pytest.mark.parametrize("ns", [0, 1, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 10**6, 2**33 - 1, 2**33, 2**63])
def test_bucket_edges(ns):
    assert _hooks.lat_bucket(ns) == latency.bucket(ns)
    low, high = latency.bucket_bounds(latency.bucket(ns))
    if latency.bucket(ns) < latency.LAT_BUCKETS - 1:
        assert low <= ns < high


def test_buckets_tile_the_line():
    for i in range(latency.LAT_BUCKETS - 1):
        assert latency.bucket_bounds(i)[1] == latency.bucket_bounds(i + 1)[0]
        low, high = latency.bucket_bounds(i)
        assert (high - low) <= max(1, low // 4)  # at most a quarter of its value wide


@pytest.mark.parametrize("n", [0, 1, 7, 64, 512])
@given(data=st.data())
def test_native_record_matches_model(n, data):
    now = data.draw(st.integers(min_value=0, max_value=1 << 40))
    rx = data.draw(st.lists(st.integers(min_value=0, max_value=(1 << 40) + 1000), min_size=n, max_size=n))
    assert _hooks.lat_record(rx, now) == model_record(rx, now)


def test_percentiles_of_a_known_spread():
    rx = [10**6 - i * 1000 for i in range(1000)]  # latencies 0, 1 us, ..., 999 us
    h = _hooks.lat_record(rx, 10**6)
    s = latency.summary(h)
    assert s["count"] == 1000
    assert s["max_us"] == pytest.approx(999.0)
    assert s["p50_us"] == pytest.approx(500, rel=0.25)
    assert s["p99_us"] == pytest.approx(990, rel=0.25)
    assert s["p99_us"] <= s["max_us"]
    assert s["mean_us"] == pytest.approx(499.5)
    assert sum(s["log2"]) == 1000


def test_empty_summary_and_diff():
    s = latency.summary(None)
    assert s["count"] == 0 and s["p50_us"] == 0.0 and s["max_us"] == 0.0
    a = _hooks.lat_record([0] * 10, 5000)
    b = _hooks.lat_record([0] * 10 + [0] * 5, 5000)
    d = latency.diff(b, a)
    assert d["count"] == 5 and sum(d["buckets"]) == 5
    assert latency.merge([a, a])["count"] == 20
