"""Latency histograms: the bucket mapping of the packet path, and percentiles.

The native core (``onvm_latency.h``) counts each packet's latency, from its RX
timestamp to a point on its way, in one of ``LAT_BUCKETS`` buckets: values
0-3 ns get one bucket each, and every power of two ``[2^k, 2^(k+1))`` above is
split into four equal sub-buckets, so a bucket is at most a quarter of its
value wide.  This module is the Python model of that mapping (tests check the
native one against it) and turns a histogram into the figures people read:
p50, p99, max and mean in microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onvm._native import LAT_BUCKETS

LOG2_BUCKETS = 34  # powers of two of ns, [2^k, 2^(k+1)) for k < 33, then the rest


def bucket(ns: int) -> int:
    """The bucket index of a latency of ``ns`` nanoseconds."""
    if ns < 4:
        return max(ns, 0)
    msb = ns.bit_length() - 1
    idx = 4 * (msb - 1) + ((ns >> (msb - 2)) & 3)
    return min(idx, LAT_BUCKETS - 1)


def bucket_bounds(idx: int) -> tuple[int, int]:
    """The values ``[low, high)`` in ns that bucket ``idx`` counts (the last one is open)."""
    if idx < 4:
        return idx, idx + 1
    msb, sub = idx // 4 + 1, idx % 4
    low = (4 + sub) << (msb - 2)
    return low, (5 + sub) << (msb - 2)


def empty() -> dict[str, Any]:
    """A histogram with nothing in it, shaped like the native one."""
    return {"count": 0, "sum_ns": 0, "max_ns": 0, "buckets": (0,) * LAT_BUCKETS}


def merge(hists: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add histograms up (instances of a service, say)."""
    out = empty()
    buckets = [0] * LAT_BUCKETS
    for h in hists:
        out["count"] += h["count"]
        out["sum_ns"] += h["sum_ns"]
        out["max_ns"] = max(out["max_ns"], h["max_ns"])
        for i, v in enumerate(h["buckets"]):
            buckets[i] += v
    out["buckets"] = tuple(buckets)
    return out


def percentile_ns(hist: dict[str, Any], q: float) -> float:
    """The ``q`` quantile (0..1) in ns, interpolated inside its bucket, at most the max."""
    count = hist["count"]
    if count <= 0:
        return 0.0
    rank = q * count
    seen = 0
    for i, n in enumerate(hist["buckets"]):
        if n and seen + n >= rank:
            low, high = bucket_bounds(i)
            frac = (rank - seen) / n
            return float(min(low + frac * (high - low), hist["max_ns"]))
        seen += n
    return float(hist["max_ns"])


def log2_counts(hist: dict[str, Any]) -> list[int]:
    """Counts per power of two of ns: entry k holds [2^k, 2^(k+1)) (entry 0 holds 0 and 1)."""
    out = [0] * LOG2_BUCKETS
    for i, n in enumerate(hist["buckets"]):
        if n:
            low = bucket_bounds(i)[0]
            out[min(max(low.bit_length() - 1, 0), LOG2_BUCKETS - 1)] += n
    return out


def summary(hist: dict[str, Any] | None) -> dict[str, Any]:
    """What the API, the dashboard and ``onvm status`` show of one histogram."""
    h = hist or empty()
    count = h["count"]
    return {
        "count": count,
        "sum_ns": h["sum_ns"],
        "mean_us": round(h["sum_ns"] / count / 1e3, 3) if count else 0.0,
        "p50_us": round(percentile_ns(h, 0.50) / 1e3, 3),
        "p99_us": round(percentile_ns(h, 0.99) / 1e3, 3),
        "max_us": round(h["max_ns"] / 1e3, 3),
        "log2": log2_counts(h),
    }


def diff(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What ``now`` counted since ``before`` (the max is that of ``now``)."""
    return {
        "count": now["count"] - before["count"],
        "sum_ns": now["sum_ns"] - before["sum_ns"],
        "max_ns": now["max_ns"],
        "buckets": tuple(a - b for a, b in zip(now["buckets"], before["buckets"], strict=True)),
    }
