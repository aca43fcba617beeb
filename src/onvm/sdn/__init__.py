"""SDN control: the manager as an OpenFlow 1.3 datapath (needs the ``sdn`` extra, os-ken).

See :mod:`onvm.sdn.agent` for how it works and :mod:`onvm.sdn.translate` for
the port numbering and how flows map onto rules and chains.
"""

from __future__ import annotations

import ssl

from onvm.constants import MAX_SERVICES
from onvm.errors import ConfigError

#: where the packet_io NF runs: an output to CONTROLLER is a hop into it (the last service)
CONTROLLER_SERVICE = MAX_SERVICES - 1
FAIL_MODES = ("secure", "standalone")


def parse_controller(text: str) -> tuple[str, str, int]:
    """``tcp:HOST:PORT``, ``ssl:HOST:PORT`` (or ``HOST:PORT``, TCP) -> (scheme, host, port)."""
    scheme, rest = "tcp", text
    if text[:4] in ("tcp:", "ssl:"):
        scheme, rest = text[:3], text[4:]
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"--controller {text}: expected tcp:HOST:PORT or ssl:HOST:PORT, e.g. "
                          "tcp:127.0.0.1:6653")
    return scheme, host, int(port)


def tls_context(private_key: str, certificate: str, ca_cert: str) -> ssl.SSLContext:
    """The TLS context of ``ssl:`` controllers, from the files Open vSwitch takes
    (``--private-key``, ``--certificate``, ``--ca-cert``): the manager shows its own
    certificate and accepts a controller only with one signed by ``ca_cert``.  As in
    Open vSwitch, the controller's name is not checked against its certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"--certificate {certificate} / --private-key {private_key}: cannot be used "
                          f"({getattr(e, 'strerror', None) or e})") from None
    try:
        ctx.load_verify_locations(ca_cert)
    except (OSError, ssl.SSLError) as e:
        why = getattr(e, "strerror", None) or e
        raise ConfigError(f"--ca-cert {ca_cert}: cannot be used ({why})") from None
    return ctx


def check_controllers(controllers: list[str], fail_mode: str,
                      tls_files: tuple[str | None, str | None, str | None] | None = None) -> None:
    """Validate ``--controller``, ``--fail-mode`` and (unless ``tls_files`` is None) for
    ``ssl:`` controllers the ``--private-key``, ``--certificate`` and ``--ca-cert`` files,
    before the manager starts."""
    try:
        import os_ken  # noqa: F401
    except ImportError:
        raise ConfigError("--controller needs os-ken: pip install 'pyonvm[sdn]'") from None
    secure = [c for c in controllers if parse_controller(c)[0] == "ssl"]
    if fail_mode not in FAIL_MODES:
        raise ConfigError(f"--fail-mode {fail_mode}: expected one of {', '.join(FAIL_MODES)}")
    if tls_files is None:
        return
    key, cert, ca = tls_files
    if secure:
        if not (key and cert and ca):
            raise ConfigError(f"--controller {secure[0]}: TLS needs --private-key, --certificate and "
                              "--ca-cert (PEM files, as ovs-vswitchd takes them)")
        tls_context(key, cert, ca)
