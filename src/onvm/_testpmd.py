"""Drive DPDK's dpdk-testpmd (Debian: the dpdk-dev package) interactively, as a peer
or a reference: the memif interop tests and ``onvm bench dpdk`` use it.

It runs with the EAL defaults a manager uses without hugepages (``--no-huge``,
``--no-shconf``, Debian's PMDs with ``-d``), a unique file prefix whose runtime
directory is removed afterwards, and a small mbuf pool.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from typing import Any

from onvm.errors import OnvmError
from onvm.ports.dpdk import runtime_dir

PROMPT = "testpmd> "
_PORT_BLOCK = re.compile(r"(?:NIC|Forward) statistics for port (\d+)")
_COUNT = re.compile(r"(RX|TX)-packets:\s*(\d+)")


def available() -> str:
    """Why testpmd cannot run here, or "" if it can."""
    if shutil.which("dpdk-testpmd") is None:
        return "dpdk-testpmd is not installed (apt-get install dpdk-dev)"
    try:
        from onvm import _dpdk
    except ImportError:
        return "pyonvm was built without DPDK (install libdpdk-dev and rebuild)"
    if not os.path.isdir(_dpdk.PMD_DIR):
        return "DPDK's PMDs are not installed (apt-get install dpdk)"
    return ""


def parse_counts(text: str) -> dict[int, dict[str, int]]:
    """RX and TX packets per port from the output of ``show port stats all`` or ``stop``."""
    out: dict[int, dict[str, int]] = {}
    port = None
    for line in text.splitlines():
        m = _PORT_BLOCK.search(line)
        if m:
            port = int(m.group(1))
            out.setdefault(port, {})
            continue
        if port is not None:
            for kind, value in _COUNT.findall(line):
                out[port].setdefault(kind.lower(), int(value))
    return out


class Testpmd:
    """One interactive dpdk-testpmd process; use as a context manager."""

    def __init__(self, vdevs: Sequence[str], args: Sequence[str] = (), cpus: str = "0-1",
                 memory_mb: int = 128, mbufs: int = 8192) -> None:
        from onvm import _dpdk

        prefix = f"tpmd-{uuid.uuid4().hex[:8]}"
        eal = ["--no-huge", "-m", str(memory_mb), "--no-shconf", "--file-prefix", prefix, "-l", cpus,
               "--no-pci", "-d", _dpdk.PMD_DIR, "--no-telemetry"]
        for v in vdevs:
            eal += ["--vdev", v]
        # stdbuf: testpmd prints through stdio, which a pipe would hold back until it exits.
        self.argv = ["stdbuf", "-o0", "dpdk-testpmd", *eal, "--", "-i", "--no-mlockall",
                     f"--total-num-mbufs={mbufs}", *args]
        self._runtime_dir = runtime_dir(eal)
        self.output = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Testpmd:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._read_until(PROMPT, timeout=30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read_until(self, marker: str, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        start = len(self.output)
        deadline = time.monotonic() + timeout
        while marker not in self.output[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OnvmError(f"dpdk-testpmd: no '{marker.strip()}' within {timeout:g} s; it said:\n"
                                f"{self.output[-2000:]}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise OnvmError(f"dpdk-testpmd exited ({self.proc.wait()}); it said:\n"
                                    f"{self.output[-2000:]}")
                self.output += chunk.decode(errors="replace")
        return self.output[start:]

    def command(self, line: str, timeout: float = 10.0) -> str:
        """Run one command; returns what it printed."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_until(PROMPT, timeout)

    def counts(self) -> dict[int, dict[str, int]]:
        """RX and TX packets per port so far."""
        return parse_counts(self.command("show port stats all"))

    def link_up(self, port: int = 0) -> bool:
        return "Link status: up" in self.command(f"show port info {port}")

    def close(self) -> None:
        """Quit (or kill what hangs) and remove the EAL's runtime directory."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            if self.proc.stdin:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            self.proc = None
            try:
                os.rmdir(self._runtime_dir)
            except OSError:
                pass
