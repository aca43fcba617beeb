"""Packet actions and drop reasons: kept for existing imports; they live in :mod:`onvm.constants`."""

from onvm.constants import DROP, NEXT, OUT, TONF, Action, DropReason

__all__ = ["DROP", "NEXT", "OUT", "TONF", "Action", "DropReason"]
