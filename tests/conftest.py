"""Settings for every test."""

from __future__ import annotations

import scapy.layers.l2  # type: ignore[import-untyped]  # noqa: F401  (sets conf.neighbor)
from hypothesis import HealthCheck, settings
from scapy.config import conf  # type: ignore[import-untyped]

# Tests build packets with scapy.  Left to itself, an Ether() without a
# destination makes scapy resolve one, which can send ARP on the host's own
# network.  Tests talk only to what they create: never resolve.
conf.neighbor.resolve = lambda *args, **kwargs: None

# The machines the suite runs on are shared and sometimes busy; a sanitizer build is
# slower still. Hypothesis's timing health checks would then fail tests for the
# machine's load, not for what they check: every property test runs without them.
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")
