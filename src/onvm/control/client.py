"""The one control client, used by the CLI, the web server, NFs and tests.

::

    with Client("onvm") as c:
        c.scale(3, service=2)
        c.rule_add(rule="tcp dst port 80 -> chain web")
        for event in c.events(timeout=1.0):
            ...

Each operation of the table in :mod:`onvm.control.ops` is a typed method here
(its fields are the method's parameters); :meth:`Client.call` sends any
operation object and :meth:`Client.request` any name with raw arguments.

Requests are synchronous and serialized by a lock, so one Client may be
shared between threads.  Events pushed by the manager while a request waits
for its reply are queued and handed out by :meth:`Client.next_event`.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, Self

from onvm.control import ops
from onvm.control.protocol import (
    MAX_MESSAGE,
    Event,
    Reply,
    decode_reply,
    encode,
    make_request,
)
from onvm.errors import (
    ManagerNotRunning,
    OnvmError,
    ProtocolError,
    error_from_code,
)
from onvm.paths import socket_path

__all__ = ["Client"]

# Messages read at most after a failed send, looking for the manager's reason.
MAX_SALVAGE = 64

_P = ParamSpec("_P")


def method(op: Callable[_P, ops.Op]) -> Callable[Concatenate[Client, _P], dict[str, Any]]:
    """A Client method for an operation class: its fields are the parameters."""

    def call(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> dict[str, Any]:
        return self.call(op(*args, **kwargs))

    name = getattr(op, "op_name", "")
    call.__name__ = call.__qualname__ = name
    call.__doc__ = op.__doc__
    return call


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Client:
    """A connection to the manager named ``name`` (or to the socket ``path``).

    Raises ManagerNotRunning if no manager listens there.  ``timeout`` bounds
    connecting and each request, in seconds.
    """

    def __init__(self, name: str = "onvm", timeout: float = 5.0,
                 path: str | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self.path = path if path is not None else socket_path(name)
        self._lock = threading.Lock()  # one reader of the socket at a time
        self._events: deque[Event] = deque()
        self._next_id = 1
        self._closed = False
        self._eof = False
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise self._connect_error(exc) from None
        sock.setblocking(False)
        self._sock = sock
        # Written whenever a request() queues an event, so that a thread
        # waiting in next_event() notices events read by someone else.  Kept
        # open until the object is collected, so a waiter never polls a
        # closed (or reused) descriptor.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def _connect_error(self, exc: OSError) -> OnvmError:
        where = f"manager '{self.name}'"
        if isinstance(exc, FileNotFoundError):
            return ManagerNotRunning(f"no manager named '{self.name}' is running "
                                     f"(no socket at {self.path})")
        if isinstance(exc, ConnectionRefusedError):
            return ManagerNotRunning(f"no manager named '{self.name}' is running "
                                     f"(nothing listens on {self.path})")
        if isinstance(exc, PermissionError):
            return OnvmError(f"may not connect to {where} at {self.path}: "
                             "permission denied", code="forbidden")
        if isinstance(exc, TimeoutError):
            return OnvmError(f"{where} did not accept a connection within "
                             f"{self.timeout} s", code="timeout")
        return ManagerNotRunning(f"can't connect to {where} at {self.path}: "
                                 f"{exc.strerror or exc}")

    # -- requests ---------------------------------------------------------------

    def request(self, op: str, /, **args: Any) -> dict[str, Any]:
        """Send request ``op`` with ``args`` and return the manager's result.

        Raises the manager's error as the matching OnvmError subclass, with
        context ``"command <op>"``.
        """
        try:
            return self._request(op, args)
        except OnvmError as exc:
            raise exc.add_context(f"command {op}") from None

    def call(self, op: ops.Op) -> dict[str, Any]:
        """Send one operation (see :mod:`onvm.control.ops`) and return the manager's result."""
        return self.request(op.op_name, **op.args())

    # One method per operation of the table (tests/unit/test_ops.py checks there are all).
    hello = method(ops.Hello)
    register = method(ops.Register)
    start = method(ops.Start)
    stopping = method(ops.Stopping)
    subscribe = method(ops.Subscribe)
    status = method(ops.Status)
    shutdown = method(ops.Shutdown)
    stop_nf = method(ops.StopNF)
    chain_add = method(ops.ChainAdd)
    chain_list = method(ops.ChainList)
    chain_del = method(ops.ChainDel)
    rule_add = method(ops.RuleAdd)
    rule_load = method(ops.RuleLoad)
    rule_change = method(ops.RuleChange)
    rule_list = method(ops.RuleList)
    rule_del = method(ops.RuleDel)
    port_chain = method(ops.PortChain)
    port_rate = method(ops.PortRate)
    flow_list = method(ops.FlowList)
    flow_add = method(ops.FlowAdd)
    flow_del = method(ops.FlowDel)
    flow_flush = method(ops.FlowFlush)
    flow_stats = method(ops.FlowStats)
    flow_explain = method(ops.FlowExplain)
    send = method(ops.Send)
    service_list = method(ops.ServiceList)
    service_policy = method(ops.ServicePolicy)
    scale = method(ops.Scale)
    packet_in = method(ops.PacketIn)
    capture_start = method(ops.CaptureStart)
    capture_stop = method(ops.CaptureStop)
    trace_add = method(ops.TraceAdd)
    trace_show = method(ops.TraceShow)
    trace_clear = method(ops.TraceClear)

    def load_rules(self, lines: Sequence[str], first_line: int = 1) -> dict[str, Any]:
        """Add the rules of a rule file (its lines; blanks and ``#`` comments are skipped), however
        many: sent in parts that each fit a message, applied together or not at all."""
        budget = MAX_MESSAGE - 1024  # what the request's other fields may take
        parts: list[tuple[int, list[str]]] = []
        part: list[str] = []
        size, start = 0, first_line
        for i, text in enumerate(lines):
            cost = len(json.dumps(text)) + 1
            if cost > budget:
                raise OnvmError(f"line {first_line + i}: {cost} bytes is too long for a rule",
                                code="bad_request")
            if part and size + cost > budget:
                parts.append((start, part))
                part, size, start = [], 0, first_line + i
            part.append(text)
            size += cost
        parts.append((start, part))
        result: dict[str, Any] = {}
        for n, (line, texts) in enumerate(parts):
            result = self.rule_load(texts, line=line, begin=n == 0, commit=n == len(parts) - 1)
        return result

    def rules(self, offset: int = 0, page: int = ops.RULE_PAGE) -> Iterator[dict[str, Any]]:
        """The rules from position ``offset`` in the order they are tried, fetched a page at a time."""
        while True:
            got = self.rule_list(offset=offset, limit=page)["rules"]
            yield from got
            if len(got) < page:
                return
            offset += len(got)

    def _request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            req_id = self._next_id
            self._next_id += 1
            data = encode(make_request(req_id, op, args))
            deadline = time.monotonic() + self.timeout
            self._send(data, deadline)
            while True:
                msg = self._recv_nowait()
                if msg is None:
                    if not self._wait(select.POLLIN, deadline):
                        raise OnvmError(f"no reply within {self.timeout} s",
                                        code="timeout")
                elif isinstance(msg, Event):
                    self._events.append(msg)
                    self._notify()
                elif msg.id == req_id or (msg.id == 0 and not msg.ok):
                    # id 0: the manager could not read our request at all.
                    return self._result(msg)
                # Anything else answers an earlier request that timed out.

    def _send(self, data: bytes, deadline: float) -> None:
        while True:
            try:
                self._sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                if not self._wait(select.POLLOUT, deadline):
                    raise OnvmError(f"manager did not take the request within "
                                    f"{self.timeout} s", code="timeout") from None
            except OSError as exc:
                self._salvage()
                raise ManagerNotRunning(f"lost the connection to manager "
                                        f"'{self.name}': {exc.strerror or exc}"
                                        ) from None

    def _salvage(self) -> None:
        """After a failed send, read what the manager sent before it closed.

        Queues events and raises an id-0 error (such as "forbidden") if the
        manager left one; the connection counts as closed afterwards.
        """
        for _ in range(MAX_SALVAGE):
            try:
                msg = self._recv_nowait()
            except ProtocolError:
                continue
            except ManagerNotRunning:
                break
            if msg is None:
                break
            if isinstance(msg, Event):
                self._events.append(msg)
                self._notify()
            elif msg.id == 0 and not msg.ok:
                self._eof = True
                self._result(msg)
        self._eof = True

    @staticmethod
    def _result(reply: Reply) -> dict[str, Any]:
        if reply.ok:
            return reply.result
        raise error_from_code(reply.error_code or "internal",
                              reply.error_message or "")

    # -- events -----------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (None: forever).

        Returns None on timeout.  Raises ManagerNotRunning once the manager
        has closed the connection and no queued event is left.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_open(allow_eof=True)
                self._drain_wake()
                if self._events:
                    return self._events.popleft()
                self._check_open()
                while (msg := self._recv_nowait()) is not None:
                    if isinstance(msg, Event):
                        return msg
                    if msg.id == 0 and not msg.ok:
                        self._result(msg)  # raises the manager's complaint
                    # Other replies belong to requests that timed out.
                sock_fd = self._sock.fileno()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            poller = select.poll()
            poller.register(sock_fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            poller.poll(None if remaining is None else max(remaining * 1000, 1))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Iterate over events until ``timeout`` passes without one or the
        connection closes."""
        while True:
            try:
                event = self.next_event(timeout)
            except ManagerNotRunning:
                return
            if event is None:
                return
            yield event

    # -- plumbing ---------------------------------------------------------------

    def fileno(self) -> int:
        """The socket's descriptor, for select()/poll() by callers.

        Readable means next_event(0) may have something.  Events read while a
        request() waited are queued, not readable: check next_event(0) after
        each request as well.
        """
        return self._sock.fileno()

    def close(self) -> None:
        """Close the connection; idempotent.  Wakes threads in next_event()."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._notify()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client {self.name!r} {self.path} {state}>"

    def _check_open(self, *, allow_eof: bool = False) -> None:
        if self._closed:
            raise ManagerNotRunning("the client connection is closed")
        if self._eof and not allow_eof:
            raise ManagerNotRunning(f"manager '{self.name}' closed the connection")

    def _recv_nowait(self) -> Reply | Event | None:
        """One message if one is waiting, else None.  Lock held."""
        if self._eof:
            raise ManagerNotRunning(f"manager '{self.name}' closed the connection")
        try:
            data = self._sock.recv(MAX_MESSAGE + 1)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionResetError:
            # Linux reports the reset ahead of messages still queued (a
            # "stop" event, say); those are read before the end is declared.
            try:
                data = self._sock.recv(MAX_MESSAGE + 1)
            except OSError:
                data = b""
        except OSError as exc:
            self._eof = True
            raise ManagerNotRunning(f"lost the connection to manager "
                                    f"'{self.name}': {exc.strerror or exc}"
                                    ) from None
        if not data:
            self._eof = True
            raise ManagerNotRunning(f"manager '{self.name}' closed the connection")
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(f"manager sent a message over the "
                                f"{MAX_MESSAGE}-byte limit")
        return decode_reply(data)

    def _wait(self, events: int, deadline: float) -> bool:
        """Wait for ``events`` on the socket until ``deadline``; False on timeout."""
        poller = select.poll()
        poller.register(self._sock.fileno(), events)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if poller.poll(max(remaining * 1000, 1)):
                return True

    def _notify(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already pending

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
