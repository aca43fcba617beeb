"""Chains and, later, rules and load-balancing policies (pure Python)."""

from onvm.flows.chain import Hop, format_chain, parse_chain

__all__ = ["Hop", "format_chain", "parse_chain"]
