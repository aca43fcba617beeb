"""Run os-ken applications as an OpenFlow controller (os-ken 4 has no osken-manager).

    python -m onvm.sdn.controller --listen 127.0.0.1:6653 examples/sdn/steer.py
    python -m onvm.sdn.controller --listen 127.0.0.1:6653 --private-key ctl-key.pem \
        --certificate ctl-cert.pem --ca-cert ca.pem examples/sdn/steer.py   # TLS only

Each APP is a module name or a .py file holding an os-ken ``OSKenApp``.  With
the three files, the controller listens with TLS only and takes a switch only
with a certificate signed by the CA (the manager's ``--controller ssl:...``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onvm.sdn.controller", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:6653", metavar="HOST:PORT",
                   help="where controllers listen for switches (default 127.0.0.1:6653)")
    p.add_argument("--private-key", metavar="FILE", help="the controller's private key (PEM): TLS")
    p.add_argument("--certificate", metavar="FILE", help="the controller's certificate (PEM)")
    p.add_argument("--ca-cert", metavar="FILE", help="the CA that signed the switches' certificates")
    p.add_argument("apps", nargs="+", metavar="APP", help="os-ken application modules or files")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdecimal():
        p.error(f"--listen {args.listen}: expected HOST:PORT")

    from os_ken.lib import hub

    hub.patch(thread=False)
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller  # noqa: F401  (registers the ofp_* options)

    tls = [args.private_key, args.certificate, args.ca_cert]
    if any(tls) and not all(tls):
        p.error("TLS needs --private-key, --certificate and --ca-cert")
    listen = ["--ofp-listen-host", host.strip("[]")]
    if all(tls):
        listen += ["--ofp-ssl-listen-port", port, "--ctl-privkey", args.private_key, "--ctl-cert",
                   args.certificate, "--ca-certs", args.ca_cert]
    else:
        listen += ["--ofp-tcp-listen-port", port]
    cfg.CONF(args=listen, project="os_ken")
    AppManager.run_apps([*args.apps, "os_ken.controller.ofp_handler"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
