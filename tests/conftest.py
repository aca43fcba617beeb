"""Settings for every test."""

from __future__ import annotations

import scapy.layers.l2  # type: ignore[import-untyped]  # noqa: F401  (sets conf.neighbor)
from scapy.config import conf  # type: ignore[import-untyped]

# Tests build packets with scapy.  Left to itself, an Ether() without a
# destination makes scapy resolve one, which can send ARP on the host's own
# network.  Tests talk only to what they create: never resolve.
conf.neighbor.resolve = lambda *args, **kwargs: None
