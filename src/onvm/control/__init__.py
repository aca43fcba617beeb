"""Control plane: the message protocol and the client everybody uses."""

from onvm.control.client import Client

__all__ = ["Client"]
