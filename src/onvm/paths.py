"""Where a manager's runtime files live.

Everything a running manager exposes on the file system sits in one runtime
directory: ``$ONVM_RUNTIME_DIR`` if set (tests give each case its own),
otherwise ``/dev/shm``.  Files are named after the manager, so several
managers can run side by side.
"""

from __future__ import annotations

import os
import re

from onvm.env import DEFAULT_RUNTIME_DIR, runtime_dir
from onvm.errors import ConfigError

__all__ = ["DEFAULT_RUNTIME_DIR", "runtime_dir", "socket_path", "validate_name"]

# The name becomes part of file names: keep it short and free of path syntax,
# and refuse a leading '.' (hidden files, "..") or '-' (read as an option).
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid manager name, else raise ConfigError.

    A valid name is 1-32 characters of ``[A-Za-z0-9_.-]`` that does not start
    with ``.`` or ``-``.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(
            f"invalid manager name {name!r}: expected 1-32 characters of "
            "A-Z a-z 0-9 _ . - not starting with '.' or '-'")
    return name


def socket_path(name: str) -> str:
    """The control socket of manager ``name``: ``<runtime_dir>/onvm-<name>.sock``."""
    path = os.path.join(runtime_dir(), f"onvm-{validate_name(name)}.sock")
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"control socket path {path!r} is longer than {_MAX_SOCKET_PATH} "
            "bytes (the Unix socket limit); set ONVM_RUNTIME_DIR to a shorter "
            "directory")
    return path
