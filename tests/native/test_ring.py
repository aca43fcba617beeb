"""The native ring against RingModel: every case across several sizes.

On a mismatch the assertion message holds both states and the operations
that led there.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from onvm import _hooks

try:
    from . import models
except ImportError:  # collected as rootdir modules: tests/native is no package
    import models  # type: ignore[no-redef]

SIZES = [2, 4, 16, 1024]


class Pair:
    """A native ring and its model, driven together; any difference fails with a dump."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = _hooks.Ring(size)
        self.model = models.RingModel(size)
        self.history: list[str] = []
        self.next_item = 0

    def items(self, n: int) -> list[int]:
        out = list(range(self.next_item, self.next_item + n))
        self.next_item += n
        return out

    def dump(self) -> str:
        last = "\n  ".join(self.history[-12:])
        return (
            f"\nnative: size={self.size} capacity={self.ring.capacity} count={self.ring.count()} "
            f"free={self.ring.free_count()}\nmodel:  {self.model!r}\nlast operations:\n  {last}"
        )

    def enqueue(self, n: int, mp: bool, bulk: bool) -> int:
        items = self.items(n)
        got = self.ring.enqueue(items, mp=mp, bulk=bulk)
        want = self.model.enqueue(items, mp=mp, bulk=bulk)
        self.history.append(f"enqueue(n={n}, mp={mp}, bulk={bulk}) -> native {got}, model {want}")
        assert got == want, f"enqueue returned {got}, model {want}" + self.dump()
        # Items that did not fit are never seen again: keep numbering dense.
        self.next_item -= n - got
        self.check_counts()
        return got

    def dequeue(self, n: int, bulk: bool) -> list[int]:
        got = self.ring.dequeue(n, bulk=bulk)
        want = self.model.dequeue(n, bulk=bulk)
        self.history.append(f"dequeue(n={n}, bulk={bulk}) -> native {len(got)}, model {len(want)}")
        assert got == want, f"dequeue returned {got[:16]}, model {want[:16]}" + self.dump()
        self.check_counts()
        return got

    def check_counts(self) -> None:
        assert self.ring.count() == self.model.count(), "count differs" + self.dump()
        assert self.ring.free_count() == self.model.free_count(), "free_count differs" + self.dump()


def op_strategy(size: int) -> st.SearchStrategy[tuple]:
    n = st.integers(min_value=0, max_value=size + 2)
    enq = st.tuples(st.just("enq"), n, st.booleans(), st.booleans())
    deq = st.tuples(st.just("deq"), n, st.booleans())
    return st.one_of(enq, deq)


# ---- construction ----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES + [1 << 24])
def test_capacity_is_size_minus_one(size: int) -> None:
    ring = _hooks.Ring(size)
    assert ring.capacity == size - 1
    assert ring.count() == 0
    assert ring.free_count() == size - 1
    assert models.RingModel(size).capacity == ring.capacity


@pytest.mark.parametrize("size", [0, 1, 3, 6, 100, 1000, 1023, 1025, 1 << 25, 2**32 - 1])
def test_invalid_size_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        _hooks.Ring(size)
    with pytest.raises(ValueError, match="power of two"):
        models.RingModel(size)


def test_entries_wider_than_32_bits_are_rejected_and_nothing_is_enqueued() -> None:
    ring = _hooks.Ring(16)
    bad = models.ENTRY_MAX + 1
    with pytest.raises(ValueError, match="32 bits"):
        ring.enqueue([1, 2, bad], mp=False)
    with pytest.raises(ValueError):
        ring.enqueue([1, bad], mp=True)
    assert ring.count() == 0
    assert ring.enqueue([models.ENTRY_MAX]) == 1  # any 32-bit value travels: readers validate
    assert ring.dequeue(1) == [models.ENTRY_MAX]


def test_negative_entries_are_rejected() -> None:
    ring = _hooks.Ring(16)
    with pytest.raises((ValueError, OverflowError)):
        ring.enqueue([3, -1])
    assert ring.count() == 0


@pytest.mark.parametrize("wide", [2**32, 2**32 + 5, 2**63])
def test_entries_wider_than_32_bits_are_rejected(wide: int) -> None:
    ring = _hooks.Ring(16)
    with pytest.raises((ValueError, OverflowError)):
        ring.enqueue([1, wide], mp=bool(wide & 1))
    assert ring.count() == 0


# ---- sequences against the model -------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_operation_sequences_match_model(size: int, data: st.DataObject) -> None:
    pair = Pair(size)
    ops = data.draw(st.lists(op_strategy(size), max_size=60), label="ops")
    for op in ops:
        if op[0] == "enq":
            pair.enqueue(op[1], mp=op[2], bulk=op[3])
        else:
            pair.dequeue(op[1], bulk=op[2])
    # Whatever is left comes out whole and in order.
    pair.dequeue(size, bulk=False)
    assert pair.ring.count() == 0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mp", [False, True])
def test_fill_and_drain_edges(size: int, mp: bool) -> None:
    pair = Pair(size)
    cap = size - 1
    assert pair.enqueue(cap + 1, mp=mp, bulk=True) == 0  # one too many: nothing
    assert pair.enqueue(cap, mp=mp, bulk=True) == cap  # exactly full
    assert pair.enqueue(1, mp=mp, bulk=False) == 0  # full: burst takes nothing
    assert pair.enqueue(1, mp=mp, bulk=True) == 0
    assert pair.dequeue(cap + 1, bulk=True) == []  # more than there is: nothing
    assert len(pair.dequeue(1, bulk=True)) == 1
    assert pair.enqueue(5, mp=mp, bulk=False) == 1  # burst: only what fits
    assert len(pair.dequeue(size * 2, bulk=False)) == cap
    assert pair.dequeue(1, bulk=False) == []
    assert pair.enqueue(0, mp=mp, bulk=True) == 0
    assert pair.dequeue(0, bulk=True) == []


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mp", [False, True])
def test_wraparound_many_laps(size: int, mp: bool) -> None:
    """Run the indices around the ring many times with bursts that do not divide it."""
    pair = Pair(size)
    cap = size - 1
    bursts = [b for b in (1, 3, 7, max(1, cap // 2 + 1), cap) if b <= cap]
    moved, laps = 0, 24
    step = 0
    while moved < laps * size:
        b = bursts[step % len(bursts)]
        pair.enqueue(b, mp=mp, bulk=step % 3 == 0)
        moved += len(pair.dequeue(bursts[(step + 1) % len(bursts)], bulk=step % 5 == 0))
        step += 1
    moved += len(pair.dequeue(size, bulk=False))
    assert moved == pair.next_item  # everything that went in came out


class RingMachine(RuleBasedStateMachine):
    """Stateful exploration: random sizes, producers, burst/bulk, interleavings."""

    def __init__(self) -> None:
        super().__init__()
        self.pair: Pair | None = None

    @initialize(size=st.sampled_from(SIZES))
    def make(self, size: int) -> None:
        self.pair = Pair(size)

    @rule(n=st.integers(0, 40), mp=st.booleans(), bulk=st.booleans())
    def enqueue(self, n: int, mp: bool, bulk: bool) -> None:
        assert self.pair is not None
        self.pair.enqueue(n, mp, bulk)

    @rule(n=st.integers(0, 40), bulk=st.booleans())
    def dequeue(self, n: int, bulk: bool) -> None:
        assert self.pair is not None
        self.pair.dequeue(n, bulk)

    @rule(mp=st.booleans())
    def fill(self, mp: bool) -> None:
        assert self.pair is not None
        self.pair.enqueue(self.pair.size, mp, False)

    @invariant()
    def counts_agree(self) -> None:
        if self.pair is not None:
            self.pair.check_counts()


RingMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ring_state_machine = RingMachine.TestCase


# ---- concurrency -----------------------------------------------------------------


@pytest.mark.parametrize("producers", [1, 2, 4])
@pytest.mark.parametrize("burst", [1, 32, 256])
@pytest.mark.parametrize("size", [16, 1024])
def test_stress_multi_producer(producers: int, burst: int, size: int) -> None:
    ring = _hooks.Ring(size)
    per = 120_000 // producers
    res = ring.stress(producers, per, burst)
    assert res == {"received": producers * per, "errors": 0, "left": 0}, res
    assert ring.count() == 0


def test_stress_on_smallest_ring() -> None:
    ring = _hooks.Ring(2)  # one usable entry: every enqueue contends
    res = ring.stress(4, 5_000, 32)
    assert res == {"received": 20_000, "errors": 0, "left": 0}, res


@pytest.mark.parametrize("args", [(0, 10, 1), (9, 10, 1), (1, 1 << 24, 1), (1, 10, 0), (1, 10, 513)])
def test_stress_rejects_bad_arguments(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        _hooks.Ring(16).stress(*args)
