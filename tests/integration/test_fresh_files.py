"""Every manager start makes its region file anew: nothing planted at its path becomes the region.

Another local user may create the region's path before the manager starts (the
runtime directory is shared, like /dev/shm), keep a mapping of what they made, or
point the path somewhere else with a symlink.  The manager must end up with a new
inode of its own, mode 0600, and must not follow the link.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid

import pytest

NOBODY = 65534
# The planter runs as nobody, who may not enter the test's virtualenv: a system Python will do.
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

# Runs as another user: makes the region's path, maps it and reports what the mapping shows.
PLANTER = textwrap.dedent("""
    import mmap, os, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    os.fchmod(fd, 0o666)
    os.ftruncate(fd, 64 << 20)
    m = mmap.mmap(fd, 64 << 20)
    m[:8] = b"planted!"
    print(os.fstat(fd).st_ino, flush=True)
    sys.stdin.readline()  # the manager has started: what does our mapping show now?
    print(m[:8].hex(), os.fstat(fd).st_size, flush=True)
""")


def as_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def shared_runtime(runtime):
    """The runtime directory made world-writable and sticky, as /dev/shm is."""
    if os.geteuid() != 0:
        pytest.skip("planting a file as another user needs root")
    os.chmod(runtime, 0o1777)
    return runtime


def test_region_planted_by_another_user_is_replaced_not_reused(deploy, shared_runtime):
    name = f"tplant{uuid.uuid4().hex[:6]}"
    path = os.path.join(shared_runtime, f"onvm-{name}.region")
    planter = subprocess.Popen([PYTHON, "-c", PLANTER, path], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, preexec_fn=as_nobody)
    try:
        planted_ino = int(planter.stdout.readline())
        dep = deploy(["--port", "null"], name=name)
        st = os.lstat(path)
        assert st.st_ino != planted_ino
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
        planter.stdin.write("\n")
        planter.stdin.flush()
        seen, size = planter.stdout.readline().split()
        assert bytes.fromhex(seen) == b"planted!"  # its mapping is of its own file, not the region
        assert int(size) == 64 << 20
        assert any("replaced a stale region" in e["text"] for e in dep.status()["events"])
    finally:
        planter.kill()
        planter.wait()


def test_region_path_symlink_is_not_followed(deploy, runtime, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 100)
    name = f"tlink{uuid.uuid4().hex[:6]}"
    path = os.path.join(runtime, f"onvm-{name}.region")
    os.symlink(victim, path)
    deploy(["--port", "null"], name=name)
    assert victim.read_bytes() == b"precious" * 100
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
