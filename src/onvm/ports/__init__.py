"""Port URIs and their configuration; the drivers live in the native core."""

from onvm.ports.uri import PortSpec, parse_port

__all__ = ["PortSpec", "parse_port"]
