"""CPU requests and busy time in the region (onvm_sched.h), through the bindings."""

from __future__ import annotations

import os

import pytest

from onvm import _native

try:
    from tests.native.test_pool import fresh_region
except ImportError:  # run from the sanitizer build's directory
    from test_pool import fresh_region  # type: ignore[no-redef]


def test_cpu_requests_read_back() -> None:
    with fresh_region() as r:
        r.nf_activate(3, 1, 0, os.getpid(), 0, "a")
        assert (r.nf_info(3)["cpu_want"], r.nf_info(3)["cpu_now"]) == (-1, -1)  # home until asked
        r.set_cpu("nf", 3, 1)
        r.set_cpu("worker", 2, 0)
        assert r.nf_info(3)["cpu_want"] == 1 and r.worker_info(2)["cpu_want"] == 0
        r.set_cpu("nf", 3, -1)
        assert r.nf_info(3)["cpu_want"] == -1
        r.set_cpu("nf", 3, 1)
        r.nf_set_draining(3)
        r.nf_reclaim(3)
        r.nf_release(3)
        r.nf_activate(3, 1, 0, os.getpid(), 0, "b")  # a new NF in the slot starts at home
        assert r.nf_info(3)["cpu_want"] == -1


@pytest.mark.parametrize("args, message", [
    (("nf", 0, 0), "NF id 0 is out of range"),
    (("worker", _native.MAX_WORKERS, 0), "worker .* is out of range"),
    (("port", 1, 0), "kind must be 'nf' or 'worker'"),
    (("nf", 1, -2), "CPU -2 is out of range"),
    (("nf", 1, 1 << 20), "is out of range"),
])
def test_bad_cpu_requests_are_refused(args: tuple[str, int, int], message: str) -> None:
    with fresh_region() as r, pytest.raises(ValueError, match=message):
        r.set_cpu(*args)


def test_busy_total_covers_the_rows_asked_for() -> None:
    with fresh_region() as r:
        assert r.busy_ns(2, []) == 0 and r.busy_ns(0, [1, 2]) == 0
        for bad in ([0], [_native.MAX_NFS], [-1]):
            with pytest.raises(ValueError, match="out of range"):
                r.busy_ns(1, bad)
        with pytest.raises(ValueError, match="at most"):
            r.busy_ns(_native.MAX_WORKERS + 1, [])
        with pytest.raises(TypeError):
            r.busy_ns(1, None)
