"""The README's runnable examples: which blocks are meant to run, and how.

A fenced block runs in the tests when the line before its fence is a marker::

    <!-- test -->
    ```python

Markers are HTML comments, so they do not show where the README is rendered.
The Python blocks of one top-level section (``## ...``) run in order in one
interpreter, sharing their names, as a reader who pastes them one after
another would run them.  Errors point at README.md and the line.  Shell
blocks, and the options a marker may carry, are described in shell.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

_MARK = re.compile(r"^<!-- test(?::\s*(?P<opts>.*?))?\s*-->$")
_FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass
class Block:
    """One marked block: where it is, what it says, and its marker's options."""

    section: str
    lang: str
    line: int  # README line of the block's first line of code
    code: str
    options: dict[str, str] = field(default_factory=dict)


def _options(text: str | None) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def blocks(path: Path = README) -> list[Block]:
    """Every marked block, in README order; a marker not followed by a fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        mark = _MARK.match(line)
        if mark:
            fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if not fence:
                raise ValueError(f"README.md:{i + 1}: a test marker must sit right above a fence")
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            out.append(Block(section, fence["lang"], i + 3, "\n".join(lines[i + 2:end]) + "\n",
                             _options(mark["opts"])))
            i = end
        i += 1
    return out


def sections(path: Path = README) -> dict[str, list[Block]]:
    """Marked blocks by top-level section, in order."""
    groups: dict[str, list[Block]] = {}
    for b in blocks(path):
        groups.setdefault(b.section, []).append(b)
    return groups


def python_script(group: list[Block]) -> str:
    """A script that runs a section's blocks in one namespace, each compiled at its own
    README line so that a traceback names README.md and the line."""
    data = json.dumps([(b.line, b.code) for b in group])
    return (f"import json\nns = {{'__name__': '__readme__'}}\n"
            f"for line, code in json.loads({data!r}):\n"
            f"    exec(compile('\\n' * (line - 1) + code, 'README.md', 'exec'), ns)\n")
