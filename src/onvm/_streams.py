"""Standard output and error that outlive their reader.

A manager whose log goes to ``| head -1``, or to a terminal that closed, must
not fall over on its next line: it would leave its region and socket behind.
Once a write to stdout or stderr finds the pipe broken, that stream's file
descriptor is pointed at /dev/null, so the write in hand and every later one,
from any thread, from Python or from native code, goes nowhere and the process
carries on (a manager keeps serving, and stops cleanly when asked).
"""

from __future__ import annotations

import os
import sys
from typing import Any


class _Guarded:
    """A text stream whose broken pipe turns it into /dev/null instead of raising."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)
        try:
            self._stream.flush()  # what was buffered goes to /dev/null now
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_output() -> None:
    """Make sys.stdout and sys.stderr survive a reader that goes away (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Guarded):
            setattr(sys, name, _Guarded(stream))
