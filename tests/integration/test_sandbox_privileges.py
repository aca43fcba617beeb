"""What an NF in a sandbox may not do: no capabilities, no new privileges, no mount, mknod or raw disk."""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import need, probe_isolated

# Runs inside the sandbox as the NF would: reports its capabilities and tries what
# only a privileged process could do.
PROBE = """\
import ctypes, errno, json, os, stat, sys
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
libc = ctypes.CDLL(None, use_errno=True)
def attempt(fn):
    try:
        return fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def mount():
    if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0:
        return 'mounted'
    return errno.errorcode.get(ctypes.get_errno(), '?')
def mknod():
    os.mknod('/tmp/onvm-disk', 0o600 | stat.S_IFBLK, os.makedev(8, 0))
    return 'made'
def read_disk():
    with open(sys.argv[1], 'rb') as f:
        return 'read %d bytes' % len(f.read(512))
print(json.dumps({'cap_eff': int(status['CapEff'], 16), 'cap_prm': int(status['CapPrm'], 16),
                  'cap_bnd': int(status['CapBnd'], 16), 'no_new_privs': int(status['NoNewPrivs']),
                  'session': os.getsid(0),
                  'mount': mount(), 'mknod': attempt(mknod), 'disk': attempt(read_disk)}))
"""


def _disk() -> str:
    """A block device of this machine (the probe must not be able to read it)."""
    for name in sorted(os.listdir("/sys/class/block")):
        if os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}"
    pytest.skip("no block device to try")


@pytest.mark.parametrize("mode", ["namespace", "podman"])
def test_sandboxed_nf_has_no_capabilities_and_cannot_mount_mknod_or_read_disks(request, mode):
    image = need(mode, request)
    seen = probe_isolated(mode, image, PROBE, [_disk()], [])
    # None held, and none to gain: with no_new_privs an exec never raises the permitted set
    # (bubblewrap leaves the bounding set as it is; podman empties it too).
    assert (seen["cap_eff"], seen["cap_prm"]) == (0, 0), seen
    assert seen["no_new_privs"] == 1, seen
    if mode == "podman":
        assert seen["cap_bnd"] == 0, seen
    # A session of its own, led inside the sandbox (0: its leader is outside, the caller's):
    # it cannot push input into the terminal it was started from.
    assert seen["session"] != 0, seen
    assert seen["mount"] in ("EPERM", "EACCES"), seen
    assert seen["mknod"] in ("EPERM", "EACCES", "EROFS"), seen
    assert seen["disk"] in ("ENOENT", "EPERM", "EACCES"), seen
