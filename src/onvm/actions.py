"""Packet actions, as in OpenNetVM: every packet leaves every hop with exactly one."""

from __future__ import annotations

import enum


class Action(enum.IntEnum):
    """What happens to a packet after a hop (the values are the wire values)."""

    DROP = 0
    NEXT = 1  # the next hop of the packet's chain
    TONF = 2  # to a service (dest = service id)
    OUT = 3  # out of a port (dest = port id)


class DropReason(enum.IntEnum):
    """Why a packet was dropped; the order matches the native counters."""

    ACTION = 0  # a handler or a chain hop said DROP
    RING_FULL = 1  # the next NF's RX ring (or a TX ring) was full
    NO_DEST = 2  # service without a running instance, or no such port
    BAD_ACTION = 3  # action or destination out of range
    CHAIN_END = 4  # NEXT past the last hop of the chain
    NO_SLOT = 5  # the pool was empty
    PORT = 6  # the port could not take it (error, or too big for a slot)
    KERNEL = 7  # the kernel's ring of an AF_PACKET or TAP port was full
    MISSED = 8  # left in the port: a paced gen port could not deliver it (as a NIC's rx_missed)
    EARLY = 9  # dropped at RX, before any NF, because its chain was congested
    INVALID = 10  # failed validation: a ring entry naming no slot handed over, a record outside its slot


DROP, NEXT, TONF, OUT = Action.DROP, Action.NEXT, Action.TONF, Action.OUT
