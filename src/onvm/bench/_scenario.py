"""The description of a benchmark scenario, and the registry of every one in the package."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from onvm.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """A command-line option of a scenario: ``--nfs 3`` reaches ``run`` as ``nfs=3``.

    The type is the default's (a bool default makes a flag) unless ``type`` says
    otherwise, e.g. for an option whose default is None."""

    flag: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    type: Callable[[str], Any] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def convert(self) -> Callable[[str], Any]:
        return self.type or (type(self.default) if self.default is not None else str)


def whole_number(what: str, lo: int, hi: int) -> Callable[[str], int]:
    """An option's converter: a whole number of ``what`` in lo..hi, else one line that says so."""

    def convert(text: str) -> int:
        n = int(text) if text.isdecimal() else -1
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"expected a number of {what} in {lo}..{hi}, got '{text}'")
        return n

    return convert


def _figure(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: f"{r['mpps']:.2f} Mpps" if key == "mpps" else f"{key} {r[key]}"


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario, described once.

    ``run(seconds=..., verbose=..., **options)`` returns its figures as a flat
    dict that holds ``key``; ``show`` renders a result in one line (default: the
    key and its value); ``options`` are what ``onvm bench NAME`` takes and
    ``preset`` the values this scenario fixes (a variant of another);
    ``default`` puts it in ``benchmarks/run.py``'s default set."""

    name: str
    what: str  # what runs, in one line
    key: str  # the figure the scenario is judged by (a key of its result)
    target: str  # what that figure should reach ("" when it is a comparison)
    run: Callable[..., dict[str, Any]]
    show: Callable[[dict[str, Any]], str] | None = None
    options: tuple[Option, ...] = ()
    preset: Mapping[str, Any] = field(default_factory=dict)
    default: bool = True

    def line(self, result: dict[str, Any]) -> str:
        """A result as RESULTS.md shows it."""
        return (self.show or _figure(self.key))(result)

    def execute(self, seconds: float = 5.0, verbose: bool = False, **options: Any) -> dict[str, Any]:
        """Run once with the options' defaults, the preset and ``options``; the figures, named."""
        known = {o.dest: o for o in self.options}
        unknown = set(options) - set(known)
        if unknown:
            raise ConfigError(f"bench {self.name}: no option {', '.join(sorted(unknown))} "
                              f"(it takes {', '.join(o.flag for o in self.options) or 'none'})")
        for k, v in options.items():
            choices = known[k].choices
            if choices is not None and v not in choices:
                raise ConfigError(f"bench {self.name}: {known[k].flag} {v}: expected one of "
                                  f"{', '.join(map(str, choices))}")
        args = {**{o.dest: o.default for o in self.options}, **self.preset, **options}
        result = self.run(seconds=seconds, verbose=verbose, **args)
        return {"scenario": self.name, **{k: v for k, v in result.items() if k != "scenario"}}


_REGISTRY: dict[str, Scenario] = {}


def scenarios() -> dict[str, Scenario]:
    """Every scenario of the package by name, sorted: each module's ``SCENARIOS``."""
    if not _REGISTRY:
        import onvm.bench as pkg

        found: dict[str, Scenario] = {}
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name.startswith("_"):
                continue
            for sc in getattr(importlib.import_module(f"{pkg.__name__}.{mod.name}"), "SCENARIOS", ()):
                if sc.name in found:
                    raise RuntimeError(f"two benchmark scenarios named '{sc.name}' (onvm.bench.{mod.name})")
                found[sc.name] = sc
        _REGISTRY.update(sorted(found.items()))
    return _REGISTRY


def get(name: str) -> Scenario:
    """The scenario called ``name``; ConfigError naming the others if there is none."""
    try:
        return scenarios()[name]
    except KeyError:
        raise ConfigError(f"no benchmark scenario '{name}' (there are: {', '.join(scenarios())})") from None
