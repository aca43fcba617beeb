"""NF programs: what ``onvm nf PROGRAM`` runs and what a topology's ``program:`` names.

Theory of operation
-------------------
An NF program is a module (or any object) that provides

- ``make(args) -> NF``: build the NF from its parsed options;
- ``add_arguments(parser)`` (optional): its own options, beside the common ones
  (``--name``, ``--service``, ``--instance``, ... from :func:`onvm.nf.common_arguments`);
- ``SUMMARY`` (optional): one line for ``onvm nf --list`` (default: the docstring's first line);
- ``SERVICE`` (optional): its default service (default: none; then one must be given).

A program is found, in this order, as

1. a built-in example NF (``simple_forward``; ``onvm nf --list``);
2. a path to a Python file (anything with a ``/`` or ending in ``.py``);
3. an NF an installed package publishes in the entry point group ``onvm.nfs``,
   e.g. in its pyproject.toml: ``[project.entry-points."onvm.nfs"] my_nf = "my_pkg.my_nf"``;
4. a module to import, ``my_pkg.my_nf`` (or ``my_pkg.nfs:my_nf``).

A file that defines no ``make`` at its top level is a plain script: it runs as
its own ``__main__`` with its options as ``sys.argv``, and the :class:`onvm.NF` it
builds takes its manager, service and instance from the environment
(``ONVM_MANAGER``, ``ONVM_SERVICE``, ``ONVM_INSTANCE``), as ``onvm run`` sets them.

A launcher (``onvm run``) starts every program the same way, as ``onvm nf
TARGET ...`` where TARGET needs no package metadata (an entry point becomes the
``module:attribute`` it names), and gives the NF the directories its code lives
in (:attr:`Program.paths`): on its ``PYTHONPATH`` and, in a sandbox, mounted
read-only.  So a user's NF runs like a built-in one in every isolation mode
and from the fork server.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from onvm.errors import ConfigError

GROUP = "onvm.nfs"


@dataclass(frozen=True)
class Program:
    """An NF program found by :func:`find`."""

    name: str  # as given (or the entry point's name)
    kind: str  # "builtin", "file", "script", "entry-point" or "module"
    # What loads it, and what a new process's 'onvm nf' is given (no package metadata needed):
    # a built-in's name, a file's absolute path, or "module[:attribute]" (an entry point's value)
    target: str
    origin: str = ""  # the distribution that publishes an entry point ("pkg 1.0")

    @property
    def is_script(self) -> bool:
        """A plain script: it builds and runs its NF itself, taking no common options."""
        return self.kind == "script"

    @property
    def paths(self) -> list[str]:
        """Directories that must be on ``sys.path`` (and visible in a sandbox) for its code."""
        if self.kind in ("file", "script"):
            return [os.path.dirname(self.target)]
        if self.kind in ("entry-point", "module"):
            root = _import_root(self.target.partition(":")[0])
            return [root] if root else []
        return []

    def load(self) -> Any:
        """The program's module (or object); ConfigError if it cannot be loaded or is no NF."""
        if self.kind == "script":
            raise ConfigError(f"NF program '{self.name}' is a plain script: it runs, it does not load")
        try:
            if self.kind == "builtin":
                obj: Any = importlib.import_module(f"onvm.nfs.{self.target}")
            elif self.kind == "file":
                obj = _load_file(self.target)
            else:
                module, _, attr = self.target.partition(":")
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
        except ConfigError:
            raise
        except Exception as e:  # the user's code failed to import: say which program and why
            raise ConfigError(f"NF program '{self.name}' ({self.target}) cannot be loaded: "
                              f"{type(e).__name__}: {e}") from e
        if not callable(getattr(obj, "make", None)):
            raise ConfigError(f"NF program '{self.name}' ({self.target}) has no make(args) function")
        return obj

    def summary(self) -> str:
        """Its one-line summary (loads it; an error becomes the summary)."""
        if self.kind == "script":
            return _docline(ast.get_docstring(_parse(self.target)) or "") or "(a plain NF script)"
        try:
            obj = self.load()
        except ConfigError as e:
            return f"(cannot load: {e.message})"
        return str(getattr(obj, "SUMMARY", "") or _docline(obj.__doc__ or ""))

    def run(self, argv: list[str]) -> int:
        """What ``onvm nf PROGRAM ARGV`` does: build the NF from ARGV and run it."""
        if self.is_script:
            _first_on_path(os.path.dirname(self.target))
            sys.argv = [self.target, *argv]
            import runpy

            runpy.run_path(self.target, run_name="__main__")
            return 0
        obj = self.load()
        nf = obj.make(parser(obj, f"onvm nf {self.name}").parse_args(argv))
        nf.run()
        return 0


def parser(program: Any, prog: str, *, cls: type[argparse.ArgumentParser] = argparse.ArgumentParser,
           **kw: Any) -> argparse.ArgumentParser:
    """The command line of an NF program (module or object): the common NF options and its own."""
    from onvm.nf import common_arguments

    p = cls(prog=prog, description=program.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw)
    common_arguments(p, service=getattr(program, "SERVICE", None))
    add = getattr(program, "add_arguments", None)
    if callable(add):
        add(p)
    return p


def _docline(doc: str) -> str:
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _parse(path: str) -> ast.Module:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"NF program '{path}': {e}") from None


def _first_on_path(directory: str) -> None:
    """A file's directory first on sys.path, as ``python FILE`` would put it."""
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _load_file(path: str) -> ModuleType:
    """Import a Python file as a module named after it, its directory first on sys.path."""
    name = os.path.splitext(os.path.basename(path))[0]
    _first_on_path(os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"NF program '{path}' is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _import_root(module: str) -> str:
    """The sys.path entry a module is imported from, found without importing it ('' if none)."""
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    if spec.submodule_search_locations:  # a package: its directory's parent
        locations = list(spec.submodule_search_locations)
        return os.path.dirname(os.path.abspath(locations[0])) if locations else ""
    if spec.origin and os.path.isfile(spec.origin):  # a top-level module file
        return os.path.dirname(os.path.abspath(spec.origin))
    return ""


def installed() -> list[Program]:
    """The NFs installed packages publish in the ``onvm.nfs`` entry point group, by name."""
    import importlib.metadata  # here: it costs an NF start that needs none of it ~14 ms

    out: dict[str, Program] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.metadata['Name']} {dist.version}" if dist is not None else ""
        out.setdefault(ep.name, Program(ep.name, "entry-point", ep.value, origin))
    return [out[k] for k in sorted(out)]


def _is_path(text: str) -> bool:
    return "/" in text or text.endswith(".py")


def find(program: str) -> Program:
    """The NF program ``program`` names (see the module's docstring); ConfigError if none."""
    from onvm.nfs import NAMES

    if program.replace("-", "_") in NAMES:
        return Program(program, "builtin", program.replace("-", "_"))
    if _is_path(program):
        path = os.path.abspath(program)
        if not os.path.isfile(path):
            raise ConfigError(f"no NF file '{program}'")
        tree = _parse(path)
        defines_make = any(isinstance(n, ast.FunctionDef) and n.name == "make" for n in tree.body)
        return Program(program, "file" if defines_make else "script", path)
    for p in installed():
        if p.name == program:
            return p
    if program.replace(".", "").replace(":", "").replace("_", "").isalnum() and \
            program[:1].isalpha() and _import_root(program.partition(":")[0]):
        return Program(program, "module", program)
    raise ConfigError(f"no NF named '{program}': not an example NF (see 'onvm nf --list'), a Python file, "
                      f"an NF an installed package publishes (entry point group '{GROUP}') or a module",
                      code="not_found")
