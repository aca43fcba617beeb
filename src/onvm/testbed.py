"""A two-host testbed on one machine: network namespaces A and B, each linked
by a veth pair to the root namespace, where the pair's other ends are ports of
a manager (``afpacket:PREFIX-a`` and ``afpacket:PREFIX-b``, or ``afxdp:...`` with
``kind="afxdp"``).  With ``queues=N`` every link has N queues each way, and the
ports ask for N queues (one per RX worker).

::

    [ns PREFIX-a] eth0 10.x.0.1 ==veth== PREFIX-a  (manager port 0)
                                          PREFIX-b  (manager port 1) ==veth== eth0 10.x.0.2 [ns PREFIX-b]

With ``managers=2`` (``onvm testbed up --managers 2``) the hosts belong to two
managers joined by a third veth pair, ``PREFIX-x1`` and ``PREFIX-x2``::

    [ns A] == PREFIX-a (port 0) manager 1 PREFIX-x1 (port 1)
                                              ==veth==
              [ns B] == PREFIX-b (port 1) manager 2 PREFIX-x2 (port 0)

Checksum offload is turned off on the namespace ends: a frame the kernel hands
to AF_PACKET before its checksum is filled in would otherwise reach the other
host with a wrong one, and TCP segmentation offload would hand over 64 KiB
frames.  ``up`` undoes what it did if a step fails; ``down`` removes all of it
and is safe to run twice.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from onvm.errors import ConfigError, OnvmError

MAX_PREFIX = 13  # interface names have at most 15 characters: PREFIX + "-a"


def _first_octets(subnet: str) -> str:
    """'10.50.0.0/24' (or '10.50.0') -> '10.50.0'; anything but an IPv4 /24 is refused."""
    text = subnet.strip()
    if text.count(".") == 2 and "/" not in text:
        text += ".0/24"
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        net = None
    if net is None or net.prefixlen != 24:
        raise ConfigError(f"testbed subnet '{subnet}': expected an IPv4 /24 such as 10.211.0.0/24 "
                          "(or its first three octets, 10.211.0)")
    return str(net.network_address).rsplit(".", 1)[0]


@dataclass(frozen=True)
class Testbed:
    """Names and addresses of one testbed; ``prefix`` keeps parallel testbeds apart."""

    __test__ = False  # not a pytest class, whatever its name

    prefix: str = "onvm"
    subnet: str = "10.211.0"  # the /24 of hosts .1 (A) and .2 (B): A.B.C.0/24 or A.B.C, kept as A.B.C
    managers: int = 1  # 2: a link between two managers (see the module docstring)
    kind: str = "afpacket"  # the port URIs' kind: afpacket or afxdp
    queues: int = 1  # queues of each link, and the ports' queues option when above 1

    def __post_init__(self) -> None:
        ok = self.prefix.replace("-", "").replace("_", "").isalnum()
        if not 1 <= len(self.prefix) <= MAX_PREFIX or not ok:
            raise ConfigError(f"testbed prefix '{self.prefix}': expected 1-{MAX_PREFIX} letters, "
                              "digits, '-' or '_'")
        object.__setattr__(self, "subnet", _first_octets(self.subnet))
        if self.managers not in (1, 2):
            raise ConfigError(f"testbed managers {self.managers}: expected 1 or 2")
        if self.kind not in ("afpacket", "afxdp"):
            raise ConfigError(f"testbed kind '{self.kind}': expected afpacket or afxdp")
        if not 1 <= self.queues <= 8:
            raise ConfigError(f"testbed queues {self.queues}: expected 1..8")

    def ns(self, side: str) -> str:
        """The namespace of host ``a`` or ``b``."""
        return f"{self.prefix}-{side}"

    def port_if(self, side: str) -> str:
        """The root-namespace end of host ``side``'s link: the manager's port."""
        return f"{self.prefix}-{side}"

    def addr(self, side: str) -> str:
        return f"{self.subnet}.{1 if side == 'a' else 2}"

    def uri(self, ifname: str) -> str:
        """The port URI of one of the manager's interfaces."""
        return f"{self.kind}:{ifname}" + (f"?queues={self.queues}" if self.queues > 1 else "")

    @property
    def ports(self) -> list[str]:
        return [self.uri(self.port_if("a")), self.uri(self.port_if("b"))]

    def trunk_if(self, manager: int) -> str:
        """Manager 1's or 2's end of the link between them (managers=2)."""
        return f"{self.prefix}-x{manager}"

    def manager_ports(self, manager: int) -> list[str]:
        """The --port URIs of manager 1 (host A, then the link) or 2 (the link, then host B)."""
        if manager == 1:
            return [self.uri(self.port_if("a")), self.uri(self.trunk_if(1))]
        return [self.uri(self.trunk_if(2)), self.uri(self.port_if("b"))]

    def exec_argv(self, side: str, *argv: str) -> list[str]:
        """An argument list running ``argv`` inside host ``side``'s namespace."""
        return ["ip", "netns", "exec", self.ns(side), *argv]

    # ---- up and down ------------------------------------------------------------
    def up(self) -> None:
        """Create both hosts and links; on failure remove what was made and raise."""
        if shutil.which("ip") is None:
            raise OnvmError("the 'ip' command (iproute2) is needed for a testbed", code="not_found")
        if shutil.which("ethtool") is None:
            raise OnvmError("the 'ethtool' command is needed for a testbed (apt-get install ethtool)",
                            code="not_found")
        existing = _netns_list()
        for side in ("a", "b"):
            if self.ns(side) in existing or os.path.exists(f"/sys/class/net/{self.port_if(side)}"):
                raise OnvmError(f"testbed '{self.prefix}' exists already (onvm testbed down "
                                f"--prefix {self.prefix} removes it)", code="busy")
        try:
            for side in ("a", "b"):
                ns, port = self.ns(side), self.port_if(side)
                _ip("netns", "add", ns)
                q = ["numtxqueues", str(self.queues), "numrxqueues", str(self.queues)]
                _ip("link", "add", port, *q, "type", "veth", "peer", "name", "eth0", *q, "netns", ns)
                _run(self.exec_argv(side, "ethtool", "-K", "eth0", "tx", "off", "tso", "off",
                                    "gso", "off"))
                _ip("-n", ns, "addr", "add", f"{self.addr(side)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _quiet_ipv6(port)
                _ip("link", "set", port, "up")
            if self.managers == 2:
                q = ["numtxqueues", str(self.queues), "numrxqueues", str(self.queues)]
                _ip("link", "add", self.trunk_if(1), *q, "type", "veth", "peer", "name", self.trunk_if(2), *q)
                for m in (1, 2):
                    _quiet_ipv6(self.trunk_if(m))
                    _ip("link", "set", self.trunk_if(m), "up")
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Remove both hosts and links; returns what was removed."""
        removed = []
        for side in ("a", "b"):
            port = self.port_if(side)
            if os.path.exists(f"/sys/class/net/{port}"):
                subprocess.run(["ip", "link", "del", port], capture_output=True)
                removed.append(f"link {port}")
            if self.ns(side) in _netns_list():
                subprocess.run(["ip", "netns", "del", self.ns(side)], capture_output=True)
                removed.append(f"netns {self.ns(side)}")
        if os.path.exists(f"/sys/class/net/{self.trunk_if(1)}"):
            subprocess.run(["ip", "link", "del", self.trunk_if(1)], capture_output=True)
            removed.append(f"link {self.trunk_if(1)}")
        return removed


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise OnvmError(f"'{' '.join(argv)}' failed: {r.stderr.strip() or r.returncode}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _quiet_ipv6(ifname: str) -> None:
    """No IPv6 chatter from the root namespace on a port (router solicitations, DAD)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass
