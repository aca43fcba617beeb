"""The NF library: write a network function as a Python handler."""

from onvm.nf._batch import Batch
from onvm.nf._lpm import PrefixTable, ip4, ip4_str, mac, prefix
from onvm.nf._nf import NF

__all__ = ["NF", "Batch", "PrefixTable", "ip4", "ip4_str", "mac", "prefix"]
