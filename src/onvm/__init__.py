"""pyonvm: network functions in Python over a zero-copy shared-memory data plane.

The public API::

    from onvm import NF, Action, Client

    nf = NF("firewall", service=2)

    @nf.packet
    def handle(pkt, meta):
        meta.drop() if pkt.tcp and pkt.tcp.dst_port == 23 else meta.next()

    nf.run()
"""

from onvm._version import __version__
from onvm.constants import DROP, NEXT, OUT, TONF, Action, DropReason
from onvm.control.client import Client
from onvm.errors import (
    ConfigError,
    LifecycleError,
    ManagerNotRunning,
    OnvmError,
    ProtocolError,
    RegionError,
)
from onvm.nf import NF, Batch, PrefixTable

__all__ = [
    "__version__",
    "DROP",
    "NEXT",
    "OUT",
    "TONF",
    "NF",
    "Action",
    "Batch",
    "Client",
    "ConfigError",
    "DropReason",
    "LifecycleError",
    "ManagerNotRunning",
    "OnvmError",
    "PrefixTable",
    "ProtocolError",
    "RegionError",
]
