"""Every option of every command is documented: the command reference is the program's
own --help (and current), and what the README lists agrees with the program."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from onvm.cli import reference
from onvm.cli.main import build_parser
from onvm.ports import uri

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def program_flags(command: str) -> set[str]:
    """The long options of ``onvm COMMAND``, from its parser."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for a in sub.choices[command]._actions for o in a.option_strings if o.startswith("--")}
    return flags - {"--help"}


def test_the_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == reference.render(), \
        "docs/cli.md differs from the program's --help: run 'make docs'"


def test_the_reference_covers_every_command():
    page = reference.render()
    for argv in reference.commands():
        assert f"\n## {' '.join(['onvm', *argv])}\n" in page
        assert "usage: " in reference.help_text(argv), argv


def test_readme_lists_every_manager_option():
    text = section("The manager")
    synopsis = set(re.findall(r"\[(--[a-z-]+)", text.split("```text\n", 1)[1].split("```", 1)[0]))
    table = {f for row in text.splitlines() if row.startswith("| `--")
             for f in re.findall(r"`(--[a-z-]+)", row.split("|")[1])}
    flags = program_flags("manager")
    assert synopsis == flags, f"synopsis: missing {flags - synopsis}, unknown {synopsis - flags}"
    assert table == flags, f"options table: missing {flags - table}, unknown {table - flags}"


@pytest.mark.parametrize("kind, keys", [("gen", uri._GEN_KEYS), ("pcap", uri._PCAP_KEYS),
                                        ("afpacket", uri._AFPACKET_KEYS), ("afxdp", uri._AFXDP_KEYS)])
def test_readme_lists_every_port_option(kind, keys):
    rows = [r for r in section("Ports").splitlines() if r.startswith(f"| `{kind}:")]
    assert len(rows) == 1, f"no row for {kind}: in the README's port table"
    named = set(re.findall(r"`([a-z_]+)(?:=[^`]*)?`", rows[0].split("|")[3]))
    assert keys <= named, f"{kind}: options missing from the README: {keys - named}"
