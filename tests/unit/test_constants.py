"""C and Python share actions, drop reasons, port kinds, policies and limits through one
source, the C headers: the native module exports them and Python reads them.

These tests fail when the two could disagree: when a header's list or limit is
not what the module exports, when Python's tables differ from the export, or
when Python source restates one of the values by hand.
"""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest

from onvm import _native, constants
from onvm.errors import OnvmError, RegionError
from onvm.manager import services
from onvm.ports.uri import KINDS

NATIVE = Path(__file__).resolve().parents[2] / "src" / "onvm" / "_native"
SRC = NATIVE.parent
TABLES = {"ONVM_ACTIONS": ("ACTIONS", 0), "ONVM_DROP_REASONS": ("DROP_REASONS", 0),
          "ONVM_PORT_KINDS": ("PORT_KINDS", 1), "ONVM_POLICIES": ("POLICIES", 0),
          "ONVM_FLOW_ORIGINS": ("FLOW_ORIGINS", 0)}
LIMITS = ("LAYOUT_VERSION", "MAX_NFS", "MAX_SERVICES", "MAX_INSTANCES", "MAX_PORTS", "MAX_WORKERS",
          "MAX_CHAINS", "MAX_HOPS", "BURST_MAX", "HEADROOM", "LAT_BUCKETS", "RULES_DEFAULT", "RULES_LIMIT",
          "TUPLES_MAX", "TIMEOUT_MAX_MS", "DEFAULT_IDLE_MS", "MAX_CAPTURES")


def headers() -> str:
    return "\n".join(p.read_text() for p in sorted(NATIVE.glob("*.h")))


def x_list(text: str, macro: str) -> list[tuple[str, str]]:
    """The (ID, name) entries of an X-macro list: ``#define MACRO(X) X(ID, "name") ...``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"#define {macro}(X)")), None)
    assert start is not None, f"{macro} is not in the headers"
    end = start
    while lines[end].rstrip().endswith("\\"):
        end += 1
    body = re.sub(r"/\*.*?\*/", "", "\n".join(lines[start:end + 1]))
    return re.findall(r'X\((\w+), "([^"]+)"\)', body)


@pytest.mark.parametrize("macro", TABLES)
def test_exported_tables_are_the_header_lists(macro: str) -> None:
    attr, first = TABLES[macro]
    entries = x_list(headers(), macro)
    assert entries, macro
    assert getattr(_native, attr) == {name: first + i for i, (_id, name) in enumerate(entries)}


@pytest.mark.parametrize("name", LIMITS)
def test_exported_limits_are_the_header_defines(name: str) -> None:
    m = re.search(rf"#define ONVM_{name} (\d+)u?\b", headers())
    assert m is not None, f"ONVM_{name} is not a plain #define in the headers"
    assert getattr(_native, name) == int(m.group(1))


def test_every_limit_define_is_exported() -> None:
    defined = set(re.findall(r"#define ONVM_(MAX_\w+) \d+", headers()))
    assert defined <= set(LIMITS) | {"MAX_QUEUES"}, defined - set(LIMITS)


def test_python_tables_are_the_exported_ones() -> None:
    assert {a.name.lower(): int(a) for a in constants.Action} == _native.ACTIONS
    assert {r.name.lower(): int(r) for r in constants.DropReason} == _native.DROP_REASONS
    assert dict(constants.PORT_KINDS) == _native.PORT_KINDS
    assert dict(constants.POLICIES) == _native.POLICIES
    assert dict(constants.FLOW_ORIGINS) == _native.FLOW_ORIGINS
    assert {services.parse_policy(n) for n in _native.POLICIES} == set(_native.POLICIES.values())
    assert services.POLICY_NAMES == {v: k for k, v in _native.POLICIES.items()}
    assert set(KINDS) == set(constants.PORT_KINDS)  # every URI scheme has a native driver, and back
    for name in LIMITS:
        if hasattr(constants, name):
            assert getattr(constants, name) == getattr(_native, name)


def test_drop_counts_names_every_reason() -> None:
    counts = constants.drop_counts(range(1, len(_native.DROP_REASONS) + 1))
    assert counts == {name: v + 1 for name, v in _native.DROP_REASONS.items()}


# ---- no Python source restates a shared value ------------------------------------------

NAMED_VALUES = {name: getattr(_native, name) for name in LIMITS}
TABLE_NAMES = [set(getattr(_native, attr)) for attr, _ in TABLES.values()]
# Field bounds such as le=63 or max_length=16: a limit, or the largest id under it
BOUNDS = {v for k, v in NAMED_VALUES.items() if k.startswith("MAX_")} | \
    {v - 1 for k, v in NAMED_VALUES.items() if k.startswith("MAX_")}


def _int(node: ast.AST) -> int | None:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def restatements(tree: ast.AST) -> list[str]:
    """Places in a module that write a shared value by hand instead of reading it."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _int(node.value) is not None:
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in NAMED_VALUES:
                    found.append(f"line {node.lineno}: {t.id} = {_int(node.value)}")
        if isinstance(node, ast.Dict):
            keys = {k.value for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(k.value, str) and _int(v) is not None}
            for names in TABLE_NAMES:
                if len(keys & names) >= 2:
                    found.append(f"line {node.lineno}: a table of {sorted(keys & names)}")
        if isinstance(node, ast.ClassDef):
            members = {t.id.lower() for s in node.body
                       if isinstance(s, ast.Assign) and _int(s.value) is not None
                       for t in s.targets if isinstance(t, ast.Name)}
            for names in TABLE_NAMES:
                if len(members & names) >= 2:
                    found.append(f"line {node.lineno}: class {node.name} lists {sorted(members & names)}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Field":
            for kw in node.keywords:
                if kw.arg in ("le", "lt", "max_length") and _int(kw.value) in BOUNDS:
                    found.append(f"line {node.lineno}: Field({kw.arg}={_int(kw.value)})")
    return found


def test_the_check_finds_restated_values() -> None:
    bad = ast.parse('MAX_HOPS = 16\nKINDS = {"null": 1, "gen": 2}\n'
                    "class DropReason(IntEnum):\n    ACTION = 0\n    RING_FULL = 1\n"
                    "svc: int = Field(0, ge=0, le=63)\n")
    assert len(restatements(bad)) == 4


def test_no_python_source_restates_a_shared_value() -> None:
    found = [f"{p.relative_to(SRC)} {where}" for p in sorted(SRC.rglob("*.py"))
             for where in restatements(ast.parse(p.read_text(), str(p)))]
    assert not found, "restated by hand (read them from onvm.constants):\n" + "\n".join(found)


# ---- one RegionError ---------------------------------------------------------------------

def test_one_region_error(tmp_path: Path) -> None:
    assert _native.RegionError is RegionError
    with pytest.raises(RegionError) as info:
        _native.Region.attach(str(tmp_path / "none.region"))
    err = info.value
    assert isinstance(err, OnvmError) and isinstance(err, OSError)
    assert err.errno == errno.ENOENT and err.code == "region"
    assert "none.region" in str(err)


def test_native_refuses_values_outside_the_tables(tmp_path: Path) -> None:
    region = _native.Region.create(os.fspath(tmp_path / "r.region"), "t", 64, 2048, 64, 0)
    try:
        with pytest.raises(ValueError, match="policy"):
            region.set_service(1, [], len(_native.POLICIES))
        with pytest.raises(ValueError, match="port kind"):
            region.set_port_info(0, max(_native.PORT_KINDS.values()) + 1, "x")
        with pytest.raises(ValueError, match="port kind"):
            region.set_port_info(0, 0, "x")
        for value in _native.POLICIES.values():
            region.set_service(1, [], value)
        for value in _native.PORT_KINDS.values():
            region.set_port_info(0, value, "x")
    finally:
        region.close()
