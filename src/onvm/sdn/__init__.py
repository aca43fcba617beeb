"""SDN control: the manager as an OpenFlow 1.3 datapath (needs the ``sdn`` extra, os-ken).

See :mod:`onvm.sdn.agent` for how it works and :mod:`onvm.sdn.translate` for
the port numbering and how flows map onto rules and chains.
"""

from __future__ import annotations

from onvm.constants import MAX_SERVICES
from onvm.errors import ConfigError

#: where the packet_io NF runs: an output to CONTROLLER is a hop into it (the last service)
CONTROLLER_SERVICE = MAX_SERVICES - 1


def check_controllers(controllers: list[str], fail_mode: str) -> None:
    """Validate ``--controller`` and ``--fail-mode`` before the manager starts."""
    try:
        import os_ken  # noqa: F401
    except ImportError:
        raise ConfigError("--controller needs os-ken: pip install 'pyonvm[sdn]'") from None
    from onvm.sdn.agent import FAIL_MODES, parse_controller

    for c in controllers:
        parse_controller(c)
    if fail_mode not in FAIL_MODES:
        raise ConfigError(f"--fail-mode {fail_mode}: expected one of {', '.join(FAIL_MODES)}")
