"""The region under attack, in process: what a hostile NF or a local user writes or cuts.

Each case that used to kill the process runs in a child interpreter, so a
regression is a failed test with the child's exit status.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_child(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout, fail on any crash or error."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


PRELUDE = """
import os, tempfile
from onvm import _native
d = tempfile.mkdtemp()
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
    # Killed by SIGBUS, as without the guard (or by SIGABRT: AddressSanitizer reports it first).
    assert proc.returncode in (-7, -6), (proc.returncode, proc.stderr)
