"""The region under attack, in process: what a hostile NF or a local user writes or cuts.

Each case that used to kill the process runs in a child interpreter, so a
regression is a failed test with the child's exit status.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap


def run_child(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout, fail on any crash, error or hang."""
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"child hung for {timeout} s:\n{e.stdout!r}\n{e.stderr!r}") from None
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


PRELUDE = """
import atexit, os, shutil, tempfile
from onvm import _hooks, _native
d = tempfile.mkdtemp(prefix="onvm-test-")
atexit.register(shutil.rmtree, d, True)  # a region's close removes its file; this, the directory
path = os.path.join(d, "r")
"""


def test_region_file_cut_short_reads_zeros_instead_of_killing_the_process() -> None:
    out = run_child(PRELUDE + """
r = _native.Region.create(path, "cut", pool_size=1024, slot_size=2048, ring_size=64)
s = r.alloc(1)[-1]
r.write(s, b"x" * 100)
print("before", r.damaged(), len(r.read(s)))
os.truncate(path, 4096)  # the header's page is all that is left
print("after", r.damaged(), len(r.read(s)), r.damaged())
other = _native.Region.create(os.path.join(d, "o"), "other", pool_size=64, slot_size=512, ring_size=64)
print("other", other.damaged())
r.close()
other.close()
os.rmdir(d)
""")
    assert "before False 100" in out
    assert "after False 0 True" in out  # the slot's meta reads as zeros: an empty packet
    assert "other False" in out


def test_a_sigbus_elsewhere_still_kills_the_process() -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE + """
import mmap, signal
print(d, flush=True)  # killed, the child cleans nothing up: the parent removes this
r = _native.Region.create(path, "cut", pool_size=64, slot_size=512, ring_size=64)
f = os.path.join(d, "plain")
with open(f, "wb") as fh:
    fh.write(b"\\0" * 8192)
fd = os.open(f, os.O_RDWR)
m = mmap.mmap(fd, 8192)
os.truncate(f, 0)
try:
    m[5000]
finally:
    r.close()
""")], capture_output=True, text=True, timeout=60)
    left = proc.stdout.split("\n", 1)[0]
    if left.startswith(tempfile.gettempdir()):
        shutil.rmtree(left, ignore_errors=True)
    # Killed by SIGBUS, as without the guard (or by SIGABRT: AddressSanitizer reports it first).
    assert proc.returncode in (-7, -6), (proc.returncode, proc.stderr)


# A manager's packet path in process, and the writes a hostile NF can make.
HOSTILE = PRELUDE + """
import struct, threading, time
r = _native.Region.create(path, "h", pool_size=1024, slot_size=512, ring_size=64)
L = _hooks.layout(r)
PID = os.getpid()
FRAME = bytes.fromhex("020000000002020000000001080045000020000000004011") + bytes(22)

def ring(nf, tx):
    return L["rings"] + L["ring_bytes"] * (2 * nf + tx)

def nf_rec(nf):
    return L["nfs"] + L["nf_size"] * nf

def meta(s, field):
    return L["meta"] + s * L["meta_size"] + L[field]

def u16(off, v): _hooks.poke(r, off, struct.pack("<H", v))
def u32(off, v): _hooks.poke(r, off, struct.pack("<I", v))
def u64(off, v): _hooks.poke(r, off, struct.pack("<Q", v))

def transit(p, c):
    return 0x8000 | p << 6 | c

def asleep(nf):  # an NF that waits for packets holds nothing: grace periods go on without it
    u32(nf_rec(nf) + L["sleeping"], 1)

def publish(nf, tx, entries):
    base = ring(nf, tx)
    for i, v in enumerate(entries):
        u32(base + L["entries"] + 4 * i, v)
    u64(base + L["prod_head"], len(entries))
    u64(base + L["prod_tail"], len(entries))

def wait(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)

def audit_until(kind, events, timeout=5.0):
    wait(lambda: events.extend(m.audit()) or any(e["kind"] == kind for e in events), "an audit event " + kind,
         timeout)

def timed_stop(m):
    t0 = time.monotonic()
    m.close_ports()
    return time.monotonic() - t0
"""


def test_out_of_range_slot_in_a_tx_ring_is_refused_and_its_nf_fenced() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
m.add_null(0)
r.nf_activate(1, 1, 0, PID, 1, "hostile")
m.start()
publish(1, 1, [10**9, 0xffffffff, 5])  # out of the pool, out of any pool, a free slot
wait(lambda: r.nf_info(1)["fenced"], "the NF to be fenced")
print("faults", r.nf_info(1)["faults"], r.nf_info(1)["fault"])
print("audit", [(e["kind"], e["nf"], e["why"]) for e in m.audit()])
print("stop", timed_stop(m) < 5, r.free_count())
r.close()
""")
    assert "faults 3 slot" in out
    assert "audit [('fault', 1, 'slot')]" in out
    assert "stop True 1024" in out


def test_garbage_reservation_record_of_a_leaving_nf_is_never_followed() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "leaving")
r.nf_activate(2, 2, 0, PID, 1, "other")
held = r.alloc(10, 1)
for ring_off, start, n in ((0x7ffffff0, 12345, 0xffffffff), (ring(2, 0), 7, 0xffffffff), (8, 0, 64)):
    enq = nf_rec(1) + L["enq"]
    u32(enq, ring_off); u32(enq + 4, start); u32(enq + 8, n); u32(enq + 12, 1)
res = m.retire(1, grace=0.2, drain=0.2)
print("reclaimed", res["reclaimed"], r.free_count(), r.nf_info(2)["rx_ring"])
r.nf_release(1)
r.close()
""")
    assert "reclaimed 10 1024 0" in out


def test_a_slot_named_twice_in_a_tx_ring_is_taken_once_and_the_pool_stays_whole() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
m.add_null(0)
r.nf_activate(1, 1, 0, PID, 1, "twice")
m.start()
s = r.alloc(1, 1)[0]  # the NF holds it, and may stamp it handed over
r.write(s, FRAME)
_hooks.poke(r, meta(s, "action"), bytes([3]))  # OUT
u16(meta(s, "dest"), 0)
u16(meta(s, "owner"), transit(1, 0))
publish(1, 1, [s, s])
wait(lambda: r.port_info(0)["tx"] == 1 and r.nf_info(1)["fenced"], "one packet out, the NF fenced")
print("free", r.free_count(), "faults", r.nf_info(1)["faults"])
got = r.alloc(1024)
print("unique", len(got), len(set(got)))
r.free(got)
timed_stop(m)
r.close()
""")
    assert "free 1024 faults 1" in out
    assert "unique 1024 1024" in out


def test_a_chain_left_half_written_costs_drops_not_a_stuck_worker() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
m.add_gen(0, rate=20000)
m.add_null(1)
r.set_chain(0, [(3, 1)])  # out of port 1
u32(L["chains"], 1)  # chain 0's sequence word: odd, and nobody will finish writing it
m.start()
wait(lambda: r.port_info(0)["drops"][8] > 0, "packets dropped as invalid")
print("out", r.port_info(1)["tx"])
events = []
audit_until("table", events)
print("table", [(e["why"], e["peer"]) for e in events if e["kind"] == "table"])
wait(lambda: r.port_info(1)["tx"] > 0, "packets through the chain again")
print("stop", timed_stop(m) < 5)
r.close()
""")
    assert "out 0" in out
    assert "table [('chain', 0)]" in out
    assert "stop True" in out


def test_a_free_stack_head_naming_no_slot_costs_allocations_not_a_stuck_worker() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
m.add_gen(0, rate=20000)
m.add_null(1)
r.set_chain(0, [(3, 1)])
u64(L["free_head"], 7 << 32 | 0x7fffffff)
m.start()
time.sleep(0.3)
print("rx", r.port_info(0)["rx"], "broken", r.info()["broken_links"] > 0)
print("stop", timed_stop(m) < 5)
r.close()
""")
    assert "rx 0 broken True" in out
    assert "stop True" in out


def test_a_producer_stopped_half_way_holds_up_nobody_and_is_fenced() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
m.add_gen(0, rate=20000)
m.add_null(1)
r.nf_activate(1, 1, 0, PID, 1, "victim")
r.nf_activate(2, 2, 0, PID, 1, "stopped")
r.set_service(1, [(1, 0)])
r.set_chain(0, [(2, 1), (3, 1)])  # service 1, then out of port 1
ctx = _native.NFContext(r, 1)
t = threading.Thread(target=ctx.run, args=(lambda pkt, meta: None,), kwargs={"batch": False, "ttl": 20})
t.start()
_hooks.reserve_only(r, 1, 4, 2)  # NF 2 reserved room in NF 1's ring and will never complete it
m.start()
wait(lambda: r.port_info(0)["rx"] > 2000, "the RX worker to go on")
held = r.nf_info(1)["rx"]
time.sleep(0.3)
print("held up", r.nf_info(1)["rx"] == held, "rx moving", r.port_info(0)["rx"] > 2000)
events = []
audit_until("ring", events)
print("events", sorted((e["kind"], e["nf"], e["peer"]) for e in events))
print("fenced", r.nf_info(2)["fenced"], r.nf_info(2)["fault"])
wait(lambda: r.nf_info(1)["rx"] > held + 100, "the victim to receive again")
ctx.stop()
t.join()
print("stop", timed_stop(m) < 5)
r.close()
""")
    assert "held up True rx moving True" in out
    assert "events [('ring', 0, 1), ('stall', 2, 1)]" in out
    assert "fenced True stall" in out
    assert "stop True" in out


def test_a_reservation_made_after_a_ring_stalled_is_not_blamed_for_the_stall() -> None:
    # NF 2 stopped half way through an enqueue into NF 1's ring; a second on, the audit
    # fences it.  NF 3 reserves room in the same ring just as the audit looks: its
    # reservation begins at the head the audit saw, after the stall began, so it cannot be
    # what holds the ring up, and NF 3 goes on.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "victim")
r.nf_activate(2, 2, 0, PID, 1, "stopped")
r.nf_activate(3, 3, 0, PID, 1, "latecomer")
pos = _hooks.reserve_only(r, 1, 4, 2)
events = []
m.audit()  # the stall's snapshot: the head is 4 entries past the tail
time.sleep(1.1)
rec = nf_rec(3) + L["enq"]  # NF 3's reservation record: ring, start, n, reserved
_hooks.poke(r, rec, struct.pack("<IIII", ring(1, 0), pos + 4, 1, 1))
audit_until("ring", events)
print("events", sorted((e["kind"], e["nf"], e["peer"]) for e in events))
print("fenced", r.nf_info(2)["fenced"], r.nf_info(3)["fenced"])
r.close()
""")
    assert "events [('ring', 0, 1), ('stall', 2, 1)]" in out
    assert "fenced True False" in out


def test_slots_an_nf_held_under_stamps_it_wrote_over_come_back_when_it_leaves() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "forger")
r.nf_activate(2, 2, 0, PID, 1, "bystander")
asleep(2)
held = r.alloc(8, 1)
# Free without being in the free stack; the manager's; gone NF 9; a port that lends nothing;
# no stamp at all; in transit to the bystander, in no ring; itself; and one left alone.
for s, stamp in zip(held, (0xffff, 0, 9, 0xff03, 0x7777, transit(1, 2), 1)):
    u16(meta(s, "owner"), stamp)
res = m.retire(1, grace=0.2, drain=0.2)
r.nf_release(1)
print("retired", res["reclaimed"])
print("swept", m.sweep(0.2), r.free_count())
r.close()
""")
    assert "retired 3" in out  # its own stamps (one forged to its own id), and in transit from it
    assert "swept 5 1024" in out


def test_a_sweep_frees_nothing_while_a_participant_has_not_passed_a_loop_iteration() -> None:
    # NF 1 stopped half way through a free (a debugger, SIGSTOP, a preempted vCPU): it has
    # stamped 8 slots free and not yet pushed them.  Another NF leaves, and the sweep that
    # follows finds 8 slots stamped free that the free stack does not hold.  Only once every
    # participant has passed a loop iteration may it take them for lost: until then NF 1 may
    # still push them, and a slot pushed by both would be in the stack twice (two owners).
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "stopped")
held = r.alloc(8, 1)
for s in held:
    u16(meta(s, "owner"), 0xffff)  # stamped free, not yet pushed
print("swept", m.sweep(0.1), "free", r.free_count())
print("stalled", m.stalled())  # who held it up, for the manager's log
head = _hooks.peek(r, L["free_head"], 8)
print("settled", m.sweep(0.1, settle=True), "stack taken", _hooks.peek(r, L["free_head"], 8) != head)
for s in held:  # NF 1 goes on and pushes them (r.free stamps them first, and refuses a free slot)
    u16(meta(s, "owner"), 1)
r.free(held)
asleep(1)  # and then waits for packets
print("swept", m.sweep(0.1), "free", r.free_count())
print("then stalled", m.stalled())
print("all", len(set(r.alloc(2048, 2))), "free", r.free_count())
r.close()
""")
    assert "swept None free 1016" in out  # the grace period did not complete: put off
    assert "stalled {'nfs': [1], 'workers': [], 'nfs_total': 1, 'workers_total': 0}" in out
    assert "then stalled {'nfs': [], 'workers': [], 'nfs_total': 0, 'workers_total': 0}" in out
    assert "settled None stack taken False" in out  # tried again while held up: the pool is not touched
    assert "swept 0 free 1024" in out
    assert "all 1024 free 0" in out


def test_a_congestion_flag_kept_up_for_nothing_is_cleared_and_its_nf_fenced() -> None:
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "flagger")
flag = L["rings"] + L["ring_bytes"] * 2 + L["congested"]
_hooks.poke(r, flag, struct.pack("<I", 1))  # congested, and its ring is empty
events = []
audit_until("fault", events)
print("events", [(e["kind"], e["nf"], e["why"]) for e in events])
print("flag", struct.unpack("<I", _hooks.peek(r, flag, 4))[0], r.nf_info(1)["fenced"])
r.close()
""")
    assert "events [('fault', 1, 'flag')]" in out
    assert "flag 0 True" in out


def test_an_nf_waiting_for_its_own_tx_ring_is_not_blamed_for_its_rx_flag() -> None:
    # The NF's TX ring is congested (nobody drains it: the manager's workers are not
    # started), so the NF waits for it and does not drain its own RX ring.  A flag left
    # up on its RX ring meanwhile is cleared, and the NF, which waits as it must, goes on.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "waiter")
r.set_service(1, [(1, 0)])
ctx = _native.NFContext(r, 1)
t = threading.Thread(target=ctx.run, args=(lambda pkt, meta: meta.out(0),),
                     kwargs={"batch": False, "ttl": 20})
t.start()
print("delivered", _hooks.deliver(r, 1, [FRAME] * 40))  # TX congested at 32 of 64
wait(lambda: r.nf_info(1)["rx"] == 40 and r.nf_info(1)["blocked"] == 1, "the NF to wait for its TX ring")
flag = ring(1, 0) + L["congested"]
_hooks.poke(r, flag, struct.pack("<I", 1))  # its RX ring flagged, and empty
events = []
deadline = time.monotonic() + 2.5
while time.monotonic() < deadline:
    events.extend(m.audit())
    time.sleep(0.05)
print("events", [(e["kind"], e["nf"], e["why"]) for e in events])
print("flag", struct.unpack("<I", _hooks.peek(r, flag, 4))[0], "fenced", r.nf_info(1)["fenced"])
ctx.stop()
t.join()
r.close()
""")
    assert "delivered 40" in out
    assert "events []" in out
    assert "flag 0 fenced False" in out


def test_a_count_held_up_across_a_sweep_does_not_land_in_the_free_count() -> None:
    # A push takes the free stack in one epoch and is held up before it counts what it
    # pushed (preempted, or an NF whose loop words said it had moved on when it had not).
    # The sweep's walk counted those slots already, in the epoch it began: the late
    # count must not add them a second time, and the count stays exact.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
def epoch():  # the free stack's head: the low bit of its tag
    return struct.unpack("<Q", _hooks.peek(r, L["free_head"], 8))[0] >> 32 & 1
before = epoch()
print("swept", m.sweep(0.05), "epoch moved", epoch() != before, "free", r.free_count())
_hooks.late_count(r, before, 5)  # a push of 5 slots made before the sweep's walk
_hooks.late_count(r, before, -3)  # and an allocation of 3
print("free after", r.free_count())
print("swept again", m.sweep(0.05), "free", r.free_count())
r.close()
""")
    assert "swept 0 epoch moved True free 1024" in out
    assert "free after 1024" in out
    assert "swept again 0 free 1024" in out


def test_a_free_stack_cut_by_a_stale_link_is_counted_once_when_the_sweep_brings_it_back() -> None:
    # An NF writes into a slot it held after it let it go: the link of a slot in the free
    # stack now names no slot.  An allocation stops there and cuts the stack; the slots past
    # the cut are free but nobody can reach them, until the sweep puts them back.  The free
    # count must then say what the stack holds, not count them a second time.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
held = r.alloc(1024, 1)
for s in reversed(held):
    r.free([s])  # the stack now runs in the order of held
u32(meta(held[10], "next_free"), 0x7fffffff)
got = r.alloc(32, 1)
print("got", len(got), "broken", r.info()["broken_links"])
r.free(got)
print("swept", m.sweep(0.2), "free", r.free_count())
print("all", len(r.alloc(2048, 1)), "free", r.free_count())
r.close()
""")
    assert "got 11 broken 1" in out
    assert "swept 1013 free 1024" in out
    assert "all 1024 free 0" in out


def test_a_slot_pushed_twice_is_handed_out_once_and_the_sweep_makes_the_count_exact() -> None:
    # Pushed twice, a slot links to itself: allocations take it once, then cut the stack,
    # and what lay under it comes back with the sweep.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "holder")
asleep(1)
held = r.alloc(1024, 1)
r.free(held)
s = r.alloc(1, 1)
r.free(s)
u16(meta(s[0], "owner"), 1)  # an NF's write over the stamp of a slot it let go
r.free(s)  # in the stack twice
got = r.alloc(2048, 1)
print("got", got == s)
print("swept", m.sweep(0.2), "free", r.free_count())
print("all", len(set(r.alloc(2048, 1))), "free", r.free_count())
r.close()
""")
    assert "got True" in out
    assert "swept 1023 free 1023" in out
    assert "all 1023 free 0" in out


def test_a_run_an_nf_wrote_over_is_checked_like_a_link_and_the_sweep_mends_what_it_cut() -> None:
    # A push of many slots writes the indices of each 64 it links (a run) into the data of the
    # last of them, a shortcut for allocations.  An NF that writes into a slot it let go may
    # change them.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "holder")
asleep(1)
def run_entry(s, j):
    return L["slots"] + s * L["slot_size"] + 4 * j
def pushed():
    held = r.alloc(1024, 1)
    r.free(held[:64])  # one run: the indices of held[:64] in held[63]'s data
    return held, held[:64]
held, run = pushed()
u32(run_entry(run[-1], 5), 0x7fffffff)  # out of the pool: the run is not taken, the links are
print("out of pool", r.alloc(64, 1) == run)
r.free(held)
held, run = pushed()
u32(run_entry(run[-1], 0), run[7])  # not the slot at that place: not taken from there
print("first", r.alloc(64, 1) == run)
r.free(held)
held, run = pushed()
busy = held[100]  # held, not free
u32(run_entry(run[-1], 10), busy)  # run[10] replaced by a slot in use: refused after the take
got = r.alloc(64, 2)
o = r.owners()
print("busy", busy not in got, len(got), (o.get(1), o.get(2)), run[10] not in got)
r.free(got)
r.free([s for s in held if s not in run])
print("swept", m.sweep(0.2), "free", r.free_count(), "all", len(set(r.alloc(2048, 1))))
r.close()
""")
    assert "out of pool True" in out
    assert "first True" in out
    assert "busy True 63 (960, 63) True" in out
    assert "swept 1 free 1024 all 1024" in out  # run[10], cut off, comes back


def test_a_stale_ring_entry_never_gets_its_nf_a_slot_the_ring_had_no_room_for() -> None:
    # NF 1 handled packets, so its RX ring's entries still name their slots; then it wrote
    # over its ring's head and the audit published the ring up to it: NF 1, in a process of
    # its own, reads those stale entries again and again.  NF 2 sends to NF 1 bursts for
    # which the ring has no room; their slots come from the top of the free stack, the very
    # slots the stale entries name (NF 1 also clears the congestion flag its full ring
    # raises, so NF 2 keeps sending).  NF 2's routing drops and frees them; NF 1 must never
    # take one meanwhile (the slot would be freed twice: more free slots than the pool has).
    out = run_child(HOSTILE + """
import subprocess, sys
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "victim")
r.nf_activate(2, 2, 0, PID, 1, "sender")
r.set_service(1, [(1, 0)])
assert _hooks.deliver(r, 1, [FRAME] * 60) == 60
_native.NFContext(r, 1).run(lambda p, mt: None, batch=False, limit=60, default_action=0)
u64(ring(1, 0) + L["prod_head"], 0x9dfe2001)
events = m.audit()
time.sleep(1.05)
events += m.audit()
print("republished", len([e for e in events if e["kind"] == "ring"]))
code = ("from onvm import _native; r = _native.Region.attach(%r); "
        "_native.NFContext(r, 1).run(lambda p, mt: None, batch=False, ttl=4.0, default_action=0)" % path)
victim = subprocess.Popen([sys.executable, "-c", code])
ctx = _native.NFContext(r, 2)
def forward(p, mt):
    mt.tonf(1)
most = sent = 0
end = time.monotonic() + 2
while time.monotonic() < end:
    u32(ring(1, 0) + L["congested"], 0)  # NF 1 clears the flag its full ring raised: NF 2 sends again
    n = _hooks.deliver(r, 2, [FRAME] * 60)
    ctx.run(forward, batch=False, limit=n, ttl=5.0)
    sent += n
    most = max(most, r.free_count())
victim.wait(10)
# Once NF 1 has read its way up to the head it wrote, the ring has room again and NF 2's
# packets reach it for real: those it may take, and nothing else.
enqueued = sent - sum(r.nf_info(2)["drops"])
print("sent", sent > 0, "taken beyond", r.nf_info(1)["rx"] - 60 - enqueued, "most free", most, "of", 1024)
r.close()
""")
    assert "republished 1" in out
    assert "sent True taken beyond 0 most free 1024 of 1024" in out


def test_what_a_leaving_nf_sent_behind_another_producers_reservation_still_reaches_its_consumer() -> None:
    # NF 3 reserved room in NF 2's RX ring and has not completed it yet (a producer preempted
    # half way); NF 1 then sends 10 packets to NF 2, behind that reservation, and leaves.  Its
    # entries are written, but the ring publishes nothing past an open reservation: they are
    # not yet between the ring's tail and its consumer.  NF 1's reclaim must not take them back:
    # once NF 3 completes, NF 2 takes them, and a slot freed by both would be freed twice.
    out = run_child(HOSTILE + """
m = _native.Manager(r, 1, 1)
r.nf_activate(1, 1, 0, PID, 1, "leaving")
r.nf_activate(2, 2, 0, PID, 1, "consumer")
r.nf_activate(3, 3, 0, PID, 1, "preempted")
r.set_service(2, [(2, 0)])
_hooks.reserve_only(r, 2, 4, 3)
assert _hooks.deliver(r, 1, [FRAME] * 10) == 10
def forward(p, mt):
    mt.tonf(2)
_native.NFContext(r, 1).run(forward, batch=False, limit=10)
res = m.retire(1, grace=0.2, drain=0.2)
r.nf_release(1)
print("reclaimed", res["reclaimed"], "free", r.free_count())
head = _hooks.peek(r, ring(2, 0) + L["prod_head"], 8)
_hooks.poke(r, ring(2, 0) + L["prod_tail"], head)  # NF 3 completes: the last one out publishes all
_native.NFContext(r, 2).run(lambda p, mt: None, batch=False, limit=10, ttl=1.0, default_action=0)
info = r.nf_info(2)
print("taken", info["rx"], "free", r.free_count())
r.close()
""")
    assert "reclaimed 0 free 1014" in out
    assert "taken 10 free 1024" in out


# The same region with two free stacks (slots 0-511 and 512-1023), as a manager with two RX workers has.
TWO_STACKS = HOSTILE.replace("ring_size=64)\nL =", "ring_size=64, free_stacks=2)\nL =", 1)


def test_the_sweep_brings_back_what_a_stale_link_cut_off_the_second_free_stack_and_counts_it_once() -> None:
    out = run_child(TWO_STACKS + """
m = _native.Manager(r, 2, 1)
held = r.alloc(1024, 1)
print("spans", held[:512] == list(range(512)), held[512:] == list(range(512, 1024)))
for s in reversed(held):
    r.free([s])  # each stack runs in index order: 0, 1, ... and 512, 513, ...
u32(meta(522, "next_free"), 0x7fffffff)
got = r.alloc(32, 1, 1)
# 11 from its own stack up to the cut, the rest from the first stack
print("got", got == list(range(512, 523)) + list(range(21)), "broken", r.info()["broken_links"])
r.free(got)
print("free", r.free_count())  # counted still: the 501 cut off are free, but nobody reaches them
print("swept", m.sweep(0.2), "free", r.free_count())
print("all", sorted(r.alloc(2048, 1, 1)) == list(range(1024)), "free", r.free_count())
r.close()
""")
    assert "spans True True" in out
    assert "got True broken 1" in out
    assert "free 1024\n" in out
    assert "swept 501 free 1024" in out
    assert "all True free 0" in out


def test_a_count_held_up_across_a_sweep_on_the_second_free_stack_does_not_land_in_the_free_count() -> None:
    out = run_child(TWO_STACKS + """
m = _native.Manager(r, 2, 1)
def epoch(k):
    return struct.unpack("<Q", _hooks.peek(r, L["free_head"] + k * L["free_stride"], 8))[0] >> 32 & 1
before = [epoch(0), epoch(1)]
print("swept", m.sweep(0.05), "moved", [epoch(k) != before[k] for k in (0, 1)], "free", r.free_count())
_hooks.late_count(r, before[1], 5, 1)
_hooks.late_count(r, before[1], -3, 1)
print("free after", r.free_count())
_hooks.late_count(r, 1 - before[1], 4, 1)  # the open epoch counts (the check is not vacuous)
print("open", r.free_count())
_hooks.late_count(r, 1 - before[1], -4, 1)
try:
    _hooks.late_count(r, 0, 1, 2)
except ValueError as e:
    print("refused", e)
r.close()
""")
    assert "swept 0 moved [True, True] free 1024" in out
    assert "free after 1024" in out
    assert "open 1028" in out
    assert "refused the region has 2 free stacks" in out


def test_a_second_free_stack_naming_no_slot_is_reported_and_allocations_go_on_from_the_first() -> None:
    out = run_child(TWO_STACKS + """
m = _native.Manager(r, 2, 1)
u64(L["free_head"] + L["free_stride"], 7 << 32 | 0x7fffffff)
events = []
audit_until("pool", events)
print("pool", [(e["peer"], e["count"]) for e in events if e["kind"] == "pool"])
got = r.alloc(600, 1, 1)
print("got", got == list(range(512)), "broken", r.info()["broken_links"] > 0)
r.close()
""")
    assert f"pool [(1, {0x7fffffff})]" in out
    assert "got True broken True" in out
