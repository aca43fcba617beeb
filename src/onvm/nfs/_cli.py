"""``onvm nf``: run an NF program, list them, or write a new one."""

from __future__ import annotations

import argparse

from onvm.nfs._new import write_skeleton
from onvm.nfs._programs import GROUP, Program, find, installed

USAGE = """\
usage: onvm nf PROGRAM [--name MANAGER] [--service S] [NF options]
       onvm nf --list
       onvm nf new NAME [--dir DIR]

PROGRAM is an example NF, a Python file (path/to/my_nf.py), an NF an installed
package publishes (entry point group 'onvm.nfs') or a module (my_pkg.my_nf).
'onvm nf --list' lists them; 'onvm nf PROGRAM --help' shows an NF's options."""


def listing() -> str:
    """Every NF program onvm can name: the examples, then the installed ones."""
    from onvm.nfs import NAMES

    lines = [f"{name:<16} {Program(name, 'builtin', name).summary()}" for name in NAMES]
    extra = installed()
    if extra:
        lines += ["", f"installed (entry point group '{GROUP}'):"]
        lines += [f"{p.name:<16} {p.summary()}" + (f"  [{p.origin}]" if p.origin else "") for p in extra]
    return "\n".join(lines)


def new(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="onvm nf new",
                                description="Write a skeleton NF (NAME.py) and its test (test_NAME.py).")
    p.add_argument("name", help="the NF's name, a Python identifier")
    p.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    args = p.parse_args(argv)
    path, test = write_skeleton(args.name, args.dir)
    print(f"wrote {path} and {test}\n"
          f"  run it:  onvm nf {path} --service 1\n"
          f"  test it: python -m pytest {test}")
    return 0


def main(argv: list[str]) -> int:
    """``onvm nf ARGV``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "--list":
        print(listing())
        return 0
    if argv[0] == "new":
        return new(argv[1:])
    return find(argv[0]).run(argv[1:])
