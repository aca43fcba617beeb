"""Load YAML into plain Python values and remember the line of every value.

PyYAML's composer gives a node tree whose nodes carry their position; this
module builds dicts, lists and scalars from it (the safe YAML 1.1 scalar
rules, through ``SafeConstructor``) and records, for every path from the root
(``("nfs", 0, "isolation")``), the 1-based line the value starts on.  A
mapping that repeats a key is refused: PyYAML would silently keep the last
one, and a topology file where the second ``service:`` wins is a trap.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from onvm.errors import ConfigError

Path = tuple[Any, ...]


class YamlError(ConfigError):
    """A file that is not valid YAML; names the file and line."""


def _construct(node: yaml.Node, path: Path, lines: dict[Path, int], ctor: SafeConstructor,
               source: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        ctor.flatten_mapping(node)  # resolves '<<' merge keys
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _construct(knode, (*path, "\0key"), {}, ctor, source)
            if isinstance(key, (list, dict)):
                raise YamlError(f"{source}:{knode.start_mark.line + 1}: a mapping key must be a scalar")
            if key in out:
                raise YamlError(
                    f"{source}:{knode.start_mark.line + 1}: {_dotted((*path, key))}: "
                    f"duplicate key '{key}' (first on line {lines[(*path, key)]})")
            lines[(*path, key)] = knode.start_mark.line + 1
            out[key] = _construct(vnode, (*path, key), lines, ctor, source)
            lines[(*path, key)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), lines, ctor, source) for i, v in enumerate(node.value)]
    return ctor.construct_object(node, deep=True)


def load(text: str, source: str = "<string>") -> tuple[Any, dict[Path, int]]:
    """Parse one YAML document; returns ``(value, lines)`` where ``lines`` maps paths to lines."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise YamlError(f"{source}{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{source}: invalid YAML: {e}") from None
    lines: dict[Path, int] = {}
    if node is None:
        return None, lines
    ctor = SafeConstructor()
    try:
        return _construct(node, (), lines, ctor, source), lines
    except ConstructorError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise YamlError(f"{source}{line}: invalid YAML: {e.problem}") from None


def _dotted(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


def dotted(path: Path) -> str:
    """``("nfs", 0, "isolation")`` -> ``nfs[0].isolation``."""
    return _dotted(path)


def line_of(lines: dict[Path, int], path: Path) -> int:
    """The line of ``path``, or of its longest known prefix (1 when nothing is known)."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get((), 1)
