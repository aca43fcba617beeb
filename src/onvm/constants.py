"""The facts the native core and Python share: actions, drop reasons, port kinds,
load-balancing policies and limits.

They are defined once, in C (X-macro lists in ``onvm_layout.h``, ``onvm_port.h``
and ``onvm_region.h``, limits as ``#define``s), exported by ``onvm._native``
and only read here.  Drop reasons, port kinds and policies are tables (and
``DropReason`` an enum) built from the native ones, so one added in C appears
here with no Python edit.
``Action`` is written out as a class because NF code names its members
(``Action.TONF``) and type-checks against them; its values still come from C,
and this module refuses to import if C has an action it lacks or the other way
round.  ``tests/unit/test_constants.py`` fails when Python restates a value.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from onvm import _native

# ---- limits --------------------------------------------------------------------------
MAX_NFS = _native.MAX_NFS  # NF ids 1..MAX_NFS-1; 0 names the manager
MAX_SERVICES = _native.MAX_SERVICES  # service ids 0..MAX_SERVICES-1
MAX_INSTANCES = _native.MAX_INSTANCES  # instances of one service
INSTANCE_MAX = _native.INSTANCE_MAX  # instance numbers 0..INSTANCE_MAX
MAX_PORTS = _native.MAX_PORTS  # port ids 0..MAX_PORTS-1
MAX_WORKERS = _native.MAX_WORKERS  # RX and TX workers together
MAX_CHAINS = _native.MAX_CHAINS  # chain 0 is the default chain
RULES_DEFAULT = _native.RULES_DEFAULT  # rule slots a manager reserves unless told otherwise
RULES_LIMIT = _native.RULES_LIMIT  # the most it may reserve
TUPLES_MAX = _native.TUPLES_MAX  # distinct masks (prefix lengths, fields, port prefixes) among the rules
TIMEOUT_MAX_MS = _native.TIMEOUT_MAX_MS  # the longest flow timeout the table's 32-bit ms clock holds
DEFAULT_IDLE_MS = _native.DEFAULT_IDLE_MS  # idle timeout of cached results whose rule names none
MAX_HOPS = _native.MAX_HOPS  # hops of one chain
BURST_MAX = _native.BURST_MAX
LAYOUT_VERSION = _native.LAYOUT_VERSION


def _member(name: str) -> str:
    return name.upper().replace("-", "_")


class Action(enum.IntEnum):
    """What happens to a packet after a hop (the values are the wire values)."""

    DROP = _native.ACTIONS["drop"]
    NEXT = _native.ACTIONS["next"]  # the next hop of the packet's chain
    TONF = _native.ACTIONS["tonf"]  # to a service (dest = service id)
    OUT = _native.ACTIONS["out"]  # out of a port (dest = port id)


if {a.name for a in Action} != {_member(n) for n in _native.ACTIONS}:
    raise ImportError(f"onvm._native has the actions {sorted(_native.ACTIONS)}, onvm.constants "
                      f"{sorted(a.name.lower() for a in Action)}: rebuild the package")

# The members are data (the native table), which mypy cannot see: hence the ignore.
DropReason = enum.IntEnum(  # type: ignore[misc]
    "DropReason", {_member(k): v for k, v in _native.DROP_REASONS.items()}, module=__name__)
DropReason.__doc__ = "Why a packet was dropped; the values index the native drop counters."

#: URI scheme -> port kind value, e.g. ``"pcap-out"`` -> 4
PORT_KINDS: Mapping[str, int] = dict(_native.PORT_KINDS)
#: policy name -> value: ``"hash"``, ``"round-robin"``, ``"least-loaded"``, ``"local"``
POLICIES: Mapping[str, int] = dict(_native.POLICIES)
#: who made a flow entry -> value: ``"rule"`` and ``"default"`` are cached results of the
#: classifier, ``"nf"`` (nf.steer) and ``"api"`` (onvm flow add) explicit entries
FLOW_ORIGINS: Mapping[str, int] = dict(_native.FLOW_ORIGINS)
#: value -> the lower-case name used in stats and JSON (``"ring_full"``)
DROP_REASON_NAMES: Mapping[int, str] = {v: k for k, v in _native.DROP_REASONS.items()}


def drop_counts(values: Iterable[int]) -> dict[str, int]:
    """Drop counters (indexed by reason, as the region keeps them) as ``{name: count}``, zeros left out."""
    return {DROP_REASON_NAMES[i]: int(v) for i, v in enumerate(values) if v}


DROP, NEXT, TONF, OUT = Action.DROP, Action.NEXT, Action.TONF, Action.OUT
