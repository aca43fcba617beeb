"""Loading rule files (YAML or JSON) and destinations for the example NFs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onvm.constants import Action
from onvm.errors import ConfigError


def load_rules(path: str) -> Any:
    """The document in ``path``: JSON for ``.json``, else YAML (which JSON also is)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read rules file {path}: {e.strerror}") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ConfigError(f"rules file {path}: {e}") from None
    import yaml  # type: ignore[import-untyped]

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"rules file {path}: {e}") from None


def target(text: str, where: str) -> tuple[Action, int]:
    """ "drop", "pass"/"next", "tonf:N" or "out:N" as (action, dest)."""
    t = str(text).strip().lower()
    if t == "drop":
        return Action.DROP, 0
    if t in ("pass", "next", "accept"):
        return Action.NEXT, 0
    kind, _, num = t.partition(":")
    if kind in ("tonf", "out") and num.isdecimal():
        return (Action.TONF if kind == "tonf" else Action.OUT), int(num)
    raise ConfigError(f"{where}: {text!r} is not drop, pass, tonf:SERVICE or out:PORT")
