"""Who may start new instances of a service: launchers the NFs cannot steer.

Theory of operation
-------------------
``onvm scale`` and the autoscaler never run anything an NF chose.  A new
instance is started only by whoever started the first one, the same way:

* **A topology** (``onvm run``): its supervisor is the launcher of every
  service of the file.  It starts new instances from the topology's own entry,
  through the same isolation backend (process, namespace, podman, docker),
  with fixed instance numbers, and supervises them (restart policy) like the
  first; instances scaled away are not restarted.
* **An NF started by hand** (``onvm nf ...``, a script calling ``NF.run()``):
  at registration the NF process gives its own command line, directory and
  ``ONVM_*`` environment (a :class:`Recipe`).  The manager records it only
  when the process holds exactly the manager's own privileges: the same user
  and groups, the same capability sets, ``no_new_privs`` and seccomp mode, and
  the same namespaces (:func:`same_privileges`, from the kernel's view of the
  peer, never from what it says).  Such a process can already run any command
  as the manager's user on the host, so running its recipe again grants it
  nothing.  A sandboxed NF (bubblewrap, a container, another user) gets no
  recipe recorded: its service cannot be scaled by the manager, and the error
  says so.  The recipe is taken once, at registration, and never re-read
  (no ``/proc/PID/cmdline``, no later message).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from onvm.errors import ConfigError

__all__ = ["Launcher", "Recipe", "same_privileges", "without_instance"]

MAX_ARGS = 256
MAX_ARG = 4096
MAX_ENV = 64
MAX_RECIPE = 16384  # bytes of a recipe as JSON: a register request must fit one control message
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: The environment an NF's recipe carries: where it finds its manager and its code.
RECIPE_ENV = ("PYTHONPATH", "PATH", "VIRTUAL_ENV", "OPENBLAS_NUM_THREADS")
#: What of /proc/PID/status must equal the manager's for a recipe to be recorded.
_PRIVILEGES = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
               "Seccomp")
_NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")


class Launcher(Protocol):
    """Starts and retires instances of the services it owns."""

    name: str

    def owns(self, service: int) -> bool:
        """Whether this launcher started ``service``'s NFs (and may start more)."""

    def grow(self, service: int, count: int, taken: set[int]) -> list[str]:
        """Start ``count`` more instances (not numbered as any of ``taken``); what was started."""

    def shrink(self, service: int, instances: list[int]) -> None:
        """These instances are being stopped for good: do not start them again."""


def without_instance(argv: list[str]) -> list[str]:
    """The command line without any ``--instance N`` / ``--instance=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--instance":
            skip = True
        elif not a.startswith("--instance="):
            out.append(a)
    return out


def _text(value: Any, what: str, limit: int = MAX_ARG) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise ConfigError(f"launch: {what} must be a non-empty string of at most {limit} characters"
                          " without NUL")
    return value


@dataclass(frozen=True)
class Recipe:
    """How an NF started by hand was started: enough to start a copy of it."""

    argv: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, data: Any) -> Recipe:
        """A recipe from a register request's ``launch``; ConfigError naming what is wrong."""
        if not isinstance(data, Mapping) or set(data) - {"argv", "cwd", "env"}:
            raise ConfigError("launch must be an object with 'argv', 'cwd' and 'env'")
        argv = data.get("argv")
        if not isinstance(argv, list) or not 1 <= len(argv) <= MAX_ARGS:
            raise ConfigError(f"launch: argv must be a list of 1..{MAX_ARGS} strings")
        args = tuple(_text(a, f"argv[{i}]") for i, a in enumerate(argv))
        cwd = _text(data.get("cwd"), "cwd")
        if not os.path.isabs(cwd):
            raise ConfigError(f"launch: cwd {cwd!r} must be an absolute path")
        env = data.get("env") or {}
        if not isinstance(env, Mapping) or len(env) > MAX_ENV:
            raise ConfigError(f"launch: env must be an object of at most {MAX_ENV} variables")
        pairs = []
        for k, v in env.items():
            if not isinstance(k, str) or not _ENV_KEY.fullmatch(k):
                raise ConfigError(f"launch: env name {str(k)[:64]!r} is not a variable name")
            pairs.append((k, _text(v, f"env {k}")))
        return cls(args, cwd, tuple(sorted(pairs)))

    @classmethod
    def of_this_process(cls) -> dict[str, Any] | None:
        """This process's recipe as a register request carries it (an NF calls this); None
        when it is too large to carry or would be refused (the NF is then not copied)."""
        import json
        import sys

        argv = without_instance([sys.executable, *sys.orig_argv[1:]])
        env = {k: v for k, v in os.environ.items()
               if (k.startswith("ONVM_") and k != "ONVM_INSTANCE") or k in RECIPE_ENV}
        try:
            recipe = {"argv": argv, "cwd": os.getcwd(), "env": env}
            cls.parse(recipe)
            if len(json.dumps(recipe)) > MAX_RECIPE:
                return None
        except (ConfigError, OSError, ValueError):
            return None
        return recipe

    def start(self) -> subprocess.Popen[bytes]:
        """A copy of the NF, as a child of this process, in its own session."""
        env = dict(os.environ)
        env.pop("ONVM_INSTANCE", None)
        env.update(self.env)
        return subprocess.Popen(list(self.argv), cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                close_fds=True, start_new_session=True)


def _status(pid: int | str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def same_privileges(pid: int) -> bool:
    """Whether process ``pid`` holds exactly this process's privileges and namespaces.

    From the kernel's view of it (``/proc/PID/status`` and ``/proc/PID/ns``);
    False when it cannot be told (the process is gone, or hidden from us)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        for ns in _NAMESPACES:
            if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
                return False
        mine, theirs = _status("self"), _status(pid)
    except OSError:
        return False
    return all(mine.get(k) == theirs.get(k) for k in _PRIVILEGES)
