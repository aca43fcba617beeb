"""SDN control: the manager as an OpenFlow 1.3 datapath (needs the ``sdn`` extra, os-ken).

See :mod:`onvm.sdn.agent` for how it works and :mod:`onvm.sdn.translate` for
the port numbering and how flows map onto rules and chains.
"""

from __future__ import annotations

from onvm.constants import MAX_SERVICES
from onvm.errors import ConfigError

#: where the packet_io NF runs: an output to CONTROLLER is a hop into it (the last service)
CONTROLLER_SERVICE = MAX_SERVICES - 1
FAIL_MODES = ("secure", "standalone")


def parse_controller(text: str) -> tuple[str, int]:
    """``tcp:HOST:PORT`` (or ``HOST:PORT``) -> (host, port)."""
    rest = text[4:] if text.startswith("tcp:") else text
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"--controller {text}: expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:6653")
    return host, int(port)


def check_controllers(controllers: list[str], fail_mode: str) -> None:
    """Validate ``--controller`` and ``--fail-mode`` before the manager starts."""
    try:
        import os_ken  # noqa: F401
    except ImportError:
        raise ConfigError("--controller needs os-ken: pip install 'pyonvm[sdn]'") from None
    for c in controllers:
        parse_controller(c)
    if fail_mode not in FAIL_MODES:
        raise ConfigError(f"--fail-mode {fail_mode}: expected one of {', '.join(FAIL_MODES)}")
