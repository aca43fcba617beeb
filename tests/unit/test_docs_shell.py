"""Command lines in the README and in every --help text work when pasted into bash.

A command line is read the way bash reads it (shlex with bash's operator
characters): a redirect or a pipe where the text means a rule's arrow would
run something else, silently, and leave a file behind.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from onvm.cli import reference

README = Path(__file__).resolve().parents[2] / "README.md"
COMMANDS = {"onvm", "make", "ip", "curl", "python", "sudo"}
SHELL_TAGS = {"", "sh", "shell", "bash", "console"}


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced blocks that hold shell (untagged or tagged as shell)."""
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M) if tag in SHELL_TAGS]


def command_lines(block: str) -> list[str]:
    """The command lines of a block: continuations joined, prompts dropped, output left out."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if line.split(" ", 1)[0] in COMMANDS:
            out.append(line)
    return out


def shell_problems(line: str) -> list[str]:
    """What bash would read otherwise than the text means: an arrow (``->``, ``=>``) it splits
    into a word and a redirect, or a quote left open.  Redirects and pipes meant as such
    (``> file``, ``2>&1 | head``) are fine."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    try:
        tokens = list(lex)
    except ValueError as e:  # an open quote: bash would wait for more
        return [str(e)]
    return [f"{a}{b}" for a, b in zip(tokens, tokens[1:], strict=False)
            if b.startswith(">") and a.endswith(("-", "="))]


def test_the_checker_sees_what_bash_sees():
    assert shell_problems("onvm rule add tcp dst port 80 -> chain web") == ["->"]
    assert shell_problems("onvm rule add tcp dst port 80 => web") == ["=>"]
    assert shell_problems("onvm rule add 'tcp dst port 80 -> chain web'") == []
    assert shell_problems("onvm rule add tcp dst port 80 to chain web") == []
    assert shell_problems("onvm manager --port gen:rate=1k,count=5 2>&1 | head -1") == []
    assert shell_problems("onvm run --schema > topology.schema.json") == []
    assert shell_problems("onvm rule add 'tcp -> chain web") == ["No closing quotation"]
    assert command_lines("$ onvm run bad.yaml\nonvm: error: bad.yaml:3: ...\n") == ["onvm run bad.yaml"]


def test_readme_command_lines_are_safe_in_bash():
    lines = [line for block in shell_blocks(README.read_text()) for line in command_lines(block)]
    assert len(lines) > 20 and any(line.startswith("onvm rule add") for line in lines)
    bad = {line: p for line in lines if (p := shell_problems(line))}
    assert not bad, f"README command lines bash would read otherwise: {bad}"


def test_help_texts_are_safe_in_bash():
    texts = {" ".join(["onvm", *argv]): reference.help_text(argv) for argv in reference.commands()}
    assert len(texts) > 20
    bad = {}
    for name, text in texts.items():
        for line in text.splitlines():
            # an example is indented, as in the epilogs (a sentence may start with "onvm" too)
            example = line.startswith("  ") and line.strip().startswith("onvm ")
            if example and (p := shell_problems(line.strip())):
                bad[f"{name}: {line.strip()}"] = p
        # a rule's arrow outside quotes, anywhere in the text (an example inside a sentence);
        # an apostrophe inside a word is no quote
        if re.search(r"-> ?chain\b", re.sub(r"(?<!\w)'[^']*'(?!\w)", "", text)):
            bad[name] = ["a rule's '->' unquoted"]
    assert not bad, f"--help examples bash would read otherwise: {bad}"


@pytest.mark.parametrize("text", ["tcp dst port 80 src 10.0.0.0/8 idle 30 to chain web"])
def test_the_documented_rule_is_one_the_parser_takes(text):
    from onvm.flows.rules import parse_rule

    assert text in README.read_text()
    assert parse_rule(text).chain == "web"
