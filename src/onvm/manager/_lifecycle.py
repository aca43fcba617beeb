r"""NF lifecycle: an explicit state table.

Theory of operation
-------------------
The manager keeps one :class:`Lifecycle` per NF.  Everything that happens to
an NF is an :class:`NFEvent`; the only way to change its state is
:meth:`Lifecycle.apply`, which looks ``(state, event)`` up in ``_TRANSITIONS``.
A missing entry is an illegal move and raises :class:`LifecycleError` with a
message built from the table itself ("can't stop NF 3 in state STARTING"),
leaving the state untouched.  There is no other branching on states.

::

    state \ event  REGISTERED  STARTED   STOP       EXITED    DIED     FENCED
    STARTING       READY       -         STOPPING   -         FAILED   FAILED
    READY          -           RUNNING   STOPPING   -         FAILED   FAILED
    RUNNING        -           -         STOPPING   -         FAILED   FAILED
    STOPPING       -           -         -          STOPPED   FAILED   FAILED
    STOPPED        -           -         -          -         -        -
    FAILED         -           -         -          -         -        -

    STARTING --REGISTERED--> READY --STARTED--> RUNNING
        |                      |                   |
        +--------STOP----------+-------STOP--------+--> STOPPING --EXITED--> STOPPED
    any non-terminal state --DIED or FENCED--> FAILED

STARTING is an NF launched but not yet registered; READY has its rings and
id; RUNNING has entered its packet loop.  STOP is a request (from a client,
from the NF itself at end of its time-to-live, or from manager shutdown);
EXITED is the NF closing its control connection after a STOP.  Losing the
connection in any other state is DIED: the process crashed or was killed.
FENCED is the manager stopping an NF that broke the rules of the shared region
(what it handed over failed validation, or it held a ring up).
STOPPED and FAILED are terminal; the registry then reclaims the NF's slots.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from onvm.errors import LifecycleError

__all__ = ["TERMINAL_STATES", "Lifecycle", "NFEvent", "NFState"]


class NFState(enum.Enum):
    """Where an NF is in its life."""

    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class NFEvent(enum.Enum):
    """Something that happened to an NF."""

    REGISTERED = "registered"  # the NF registered over the control socket
    STARTED = "started"        # the NF entered its packet loop
    STOP = "stop"              # someone asked the NF to stop
    EXITED = "exited"          # the NF went away after being asked to stop
    DIED = "died"              # the NF went away without being asked
    FENCED = "fenced"          # the manager stopped it: it broke the rules of the region


_S, _E = NFState, NFEvent

_TRANSITIONS: dict[tuple[NFState, NFEvent], NFState] = {
    (_S.STARTING, _E.REGISTERED): _S.READY,
    (_S.READY, _E.STARTED): _S.RUNNING,
    (_S.STARTING, _E.STOP): _S.STOPPING,
    (_S.READY, _E.STOP): _S.STOPPING,
    (_S.RUNNING, _E.STOP): _S.STOPPING,
    (_S.STOPPING, _E.EXITED): _S.STOPPED,
    (_S.STARTING, _E.DIED): _S.FAILED,
    (_S.READY, _E.DIED): _S.FAILED,
    (_S.RUNNING, _E.DIED): _S.FAILED,
    (_S.STOPPING, _E.DIED): _S.FAILED,
    (_S.STARTING, _E.FENCED): _S.FAILED,
    (_S.READY, _E.FENCED): _S.FAILED,
    (_S.RUNNING, _E.FENCED): _S.FAILED,
    (_S.STOPPING, _E.FENCED): _S.FAILED,
}

# The verb of each event, for "can't <verb> NF <id> in state <STATE>".
_VERBS: dict[NFEvent, str] = {
    _E.REGISTERED: "register",
    _E.STARTED: "start",
    _E.STOP: "stop",
    _E.EXITED: "finish",
    _E.DIED: "fail",
    _E.FENCED: "fence",
}

TERMINAL_STATES: frozenset[NFState] = frozenset({_S.STOPPED, _S.FAILED})


class Lifecycle:
    """The state of one NF and the record of how it got there."""

    __slots__ = ("_clock", "history", "nf_id", "state")

    def __init__(self, nf_id: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nf_id = nf_id
        self.state = NFState.STARTING
        self._clock = clock
        #: ``(monotonic time, state entered)``, starting with STARTING.
        self.history: list[tuple[float, NFState]] = [(clock(), self.state)]

    @property
    def terminal(self) -> bool:
        """True once the NF is STOPPED or FAILED; no event applies any more."""
        return self.state in TERMINAL_STATES

    def can(self, event: NFEvent) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self.state, event) in _TRANSITIONS

    def apply(self, event: NFEvent) -> NFState:
        """Move to the state ``event`` leads to and return it.

        Raises LifecycleError, without changing anything, if the event is not
        allowed in the current state.
        """
        new = _TRANSITIONS.get((self.state, event))
        if new is None:
            raise LifecycleError(
                f"can't {_VERBS[event]} NF {self.nf_id} in state {self.state.name}")
        self.state = new
        self.history.append((self._clock(), new))
        return new

    def __repr__(self) -> str:
        return f"Lifecycle(nf_id={self.nf_id}, state={self.state.name})"
