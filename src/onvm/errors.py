"""The one exception hierarchy of pyonvm.

Every failure surfaces as an :class:`OnvmError` carrying a short machine code
(``"no_such_nf"``, ``"illegal_transition"``...) and a human message.  Errors
travel over the control socket as ``(code, message)`` pairs and are turned
back into the matching subclass by :func:`error_from_code`, so a CLI or test
catches the same type the manager raised.

On its way up an error gathers context (``"NF 3"``, ``"command scale"``)
with :meth:`OnvmError.add_context`; the outermost context is printed first::

    >>> err = LifecycleError("can't stop NF 3 in state STARTING")
    >>> str(err.add_context("command stop"))
    "command stop: can't stop NF 3 in state STARTING"
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CODES",
    "ConfigError",
    "LifecycleError",
    "ManagerNotRunning",
    "OnvmError",
    "ProtocolError",
    "RegionError",
    "error_from_code",
]

#: The codes used by pyonvm itself.  Other codes are allowed (a newer manager
#: may send one) and round-trip as a plain :class:`OnvmError`.
CODES: frozenset[str] = frozenset({
    "bad_request",         # malformed or invalid arguments, bad configuration
    "no_such_nf",          # the NF id named in a request is unknown
    "illegal_transition",  # a lifecycle event not allowed in the NF's state
    "protocol",            # a control message that can't be decoded
    "region",              # the shared region is missing, foreign or damaged
    "busy",                # the resource is held by someone else
    "not_found",           # a named service, chain, rule or port is unknown
    "not_running",         # no manager answers on the control socket
    "forbidden",           # the caller may not use this manager
    "timeout",             # no answer in time
    "internal",            # a bug: the manager caught an unexpected exception
})


class OnvmError(Exception):
    """Base of all pyonvm errors: a ``code``, a ``message`` and a context trail.

    ``context`` is kept in the order it was added (innermost first);
    ``str()`` renders it outermost first, followed by the message.
    """

    default_code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = code if code is not None else self.default_code
        self.message: str = message
        self.context: list[str] = []

    def add_context(self, text: str) -> OnvmError:
        """Record where the error passed through (e.g. ``"NF 3"``); returns self."""
        self.context.append(text)
        return self

    def __str__(self) -> str:
        return ": ".join([*reversed(self.context), self.message])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only ``code`` and the context list are not in ``args``, so the
        # default pickling would lose them (errors cross process boundaries).
        return (_rebuild, (type(self), self.message, self.code, list(self.context)))


def _rebuild(cls: type[OnvmError], message: str, code: str,
             context: list[str]) -> OnvmError:
    err = cls(message, code=code)
    err.context = context
    return err


class ProtocolError(OnvmError):
    """A control message could not be encoded or decoded."""

    default_code = "protocol"


class LifecycleError(OnvmError):
    """An NF lifecycle event is not allowed in the NF's current state."""

    default_code = "illegal_transition"


class RegionError(OnvmError, OSError):
    """The shared region is missing, incompatible or damaged, or a native slow-path call failed.

    The native core raises this very class, with the ``errno`` it failed with
    (``errno.EBUSY``: another live manager holds the region) and its message.
    """

    default_code = "region"

    def __init__(self, message: str, *, code: str | None = None, errno: int | None = None) -> None:
        OnvmError.__init__(self, message, code=code)
        self.errno = errno  # type: ignore[assignment]
        self.strerror = message  # type: ignore[assignment]


class ConfigError(OnvmError):
    """A configuration value or request argument is invalid."""

    default_code = "bad_request"


class ManagerNotRunning(OnvmError):
    """No manager answers on the control socket."""

    default_code = "not_running"


_BY_CODE: dict[str, type[OnvmError]] = {
    cls.default_code: cls
    for cls in (ProtocolError, LifecycleError, RegionError, ConfigError,
                ManagerNotRunning)
}


def error_from_code(code: str, message: str) -> OnvmError:
    """Rebuild the exception a peer reported as ``(code, message)``.

    Known codes map to their subclass; any other code gives a plain
    :class:`OnvmError` that keeps the code, so nothing is lost.
    """
    cls = _BY_CODE.get(code, OnvmError)
    return cls(message, code=code)
