"""Run os-ken applications as an OpenFlow controller (os-ken 4 has no osken-manager).

    python -m onvm.sdn.controller --listen 127.0.0.1:6653 examples/sdn/steer.py

Each APP is a module name or a .py file holding an os-ken ``OSKenApp``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onvm.sdn.controller", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:6653", metavar="HOST:PORT",
                   help="where controllers listen for switches (default 127.0.0.1:6653)")
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

    cfg.CONF(args=["--ofp-listen-host", host.strip("[]"), "--ofp-tcp-listen-port", port], project="os_ken")
    AppManager.run_apps([*args.apps, "os_ken.controller.ofp_handler"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
