"""The command reference: every ``onvm ... --help`` in one Markdown page.

``make docs`` (``python -m onvm.cli.reference > docs/cli.md``) writes it, and a
test checks that the page still says what the program says, so an option is
never missing from the documentation: the page is made from the parsers
themselves.  Help is rendered 100 columns wide, whatever the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from onvm import nfs
from onvm.cli.main import build_parser, main

WIDTH = "100"


def commands() -> list[list[str]]:
    """The argv of every command whose help the page shows, in the order it shows them."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out: list[list[str]] = [[]]
    for name in sub.choices:
        out.append([name])
        if name == "nf":
            out += [["nf", n] for n in nfs.NAMES]
    return out


def help_text(argv: list[str]) -> str:
    """What ``onvm ARGV --help`` prints."""
    buf = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            main([*argv, "--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return buf.getvalue()


def render() -> str:
    """The whole page."""
    parts = ["# onvm command reference\n\n"
             "Every command's `--help`, made from the program by `make docs`; do not edit by hand.\n"
             "The README explains the commands; this page lists every option.\n"]
    for argv in commands():
        parts.append(f"\n## {' '.join(['onvm', *argv])}\n\n```text\n{help_text(argv).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
