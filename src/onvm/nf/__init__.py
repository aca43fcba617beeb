"""The NF library: write a network function as a Python handler."""

from onvm._native import checksum, fix_checksums
from onvm.nf._batch import Batch
from onvm.nf._lpm import PrefixTable, ip4, ip4_str, mac, prefix
from onvm.nf._nf import NF, common_arguments, from_args

__all__ = ["NF", "Batch", "PrefixTable", "checksum", "common_arguments", "fix_checksums", "from_args", "ip4",
           "ip4_str", "mac", "prefix"]
