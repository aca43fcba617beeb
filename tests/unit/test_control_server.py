"""The control server and client over real Unix sockets in a temporary directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from onvm.control import server as server_module
from onvm.control.client import Client
from onvm.control.protocol import MAX_MESSAGE, Event, Request
from onvm.control.server import Connection, ControlServer
from onvm.errors import (
    ConfigError,
    ManagerNotRunning,
    OnvmError,
    ProtocolError,
)

WAIT = 2.0  # generous bound for things that should take microseconds


class Recorder:
    """Handlers for a ControlServer that record what happens."""

    def __init__(self) -> None:
        self.requests: list[tuple[Connection, Request]] = []
        self.closed: list[Connection] = []
        self.closed_event = threading.Event()
        self.release = threading.Event()
        self.server: ControlServer | None = None
        self.lock = threading.Lock()

    def on_request(self, conn: Connection, req: Request) -> dict[str, Any]:
        with self.lock:
            self.requests.append((conn, req))
        if req.op == "echo":
            return {"args": req.args, "pid": conn.pid, "conn": conn.conn_id}
        if req.op == "fail":
            raise ConfigError("count must be positive").add_context("service 2")
        if req.op == "boom":
            raise ValueError("oops")
        if req.op == "notify":
            conn.send_event("note", {"n": req.args.get("n", 0)})
            return {}
        if req.op == "huge":
            return {"s": "x" * MAX_MESSAGE}
        if req.op == "not_a_dict":
            return [1, 2]  # type: ignore[return-value]
        if req.op == "wait":
            self.release.wait(WAIT)
            return {"waited": True}
        if req.op == "shutdown":
            assert self.server is not None
            self.server.stop()
            return {"bye": True}
        raise OnvmError(f"unknown op {req.op!r}", code="not_found")

    def on_close(self, conn: Connection) -> None:
        with self.lock:
            self.closed.append(conn)
        self.closed_event.set()

    def wait_closed(self, count: int = 1, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.closed) >= count:
                    return True
            self.closed_event.wait(0.01)
            self.closed_event.clear()
        return False


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    leaked = [t for t in threading.enumerate() if t.name.startswith("onvm-control")]
    assert not leaked, f"server threads left running: {leaked}"


@pytest.fixture
def sock_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ONVM_RUNTIME_DIR", str(tmp_path))
    return str(tmp_path / "onvm-t.sock")


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Callables run at teardown, last registered first, even on failure."""
    actions: list[Callable[[], object]] = []
    yield actions
    for action in reversed(actions):
        action()


@pytest.fixture
def make_server(sock_path: str, cleanup: list[Callable[[], object]]
                ) -> Callable[..., tuple[ControlServer, Recorder]]:
    def make(path: str = sock_path, start: bool = True) -> tuple[ControlServer, Recorder]:
        rec = Recorder()
        srv = ControlServer(path, rec.on_request, rec.on_close)
        rec.server = srv
        cleanup.append(srv.stop)
        if start:
            srv.start()
        return srv, rec
    return make


@pytest.fixture
def make_client(sock_path: str, cleanup: list[Callable[[], object]]
                ) -> Callable[..., Client]:
    def make(timeout: float = WAIT, path: str = sock_path) -> Client:
        client = Client("t", timeout=timeout, path=path)
        cleanup.append(client.close)
        return client
    return make


@pytest.fixture
def raw_socket(sock_path: str, cleanup: list[Callable[[], object]]
               ) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cleanup.append(sock.close)
        sock.settimeout(WAIT)
        sock.connect(sock_path)
        return sock
    return make


def send_json(sock: socket.socket, obj: dict[str, Any]) -> dict[str, Any]:
    sock.send(json.dumps(obj).encode())
    reply: dict[str, Any] = json.loads(sock.recv(MAX_MESSAGE + 1))
    return reply


def stale_socket(path: str) -> None:
    """Leave a socket file behind with nobody listening, like a killed manager."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.close()


# -- starting, claiming the path, stopping ---------------------------------------------

def test_socket_is_0600(make_server: Any, sock_path: str) -> None:
    srv, _ = make_server()
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(srv.lock_path).st_mode) == 0o600
    assert srv.running


def test_socket_is_0600_under_a_permissive_umask(make_server: Any,
                                                  sock_path: str) -> None:
    old = os.umask(0)
    try:
        make_server()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600


def test_stop_removes_files_and_is_idempotent(make_server: Any, sock_path: str) -> None:
    srv, _ = make_server()
    srv.stop()
    assert not os.path.lexists(sock_path)
    assert not os.path.lexists(srv.lock_path)
    assert not srv.running
    srv.stop()


def test_stop_before_start_is_harmless(make_server: Any, sock_path: str) -> None:
    srv, _ = make_server(start=False)
    srv.stop()
    assert not os.path.lexists(sock_path)


def test_server_is_single_use(make_server: Any) -> None:
    srv, _ = make_server()
    srv.stop()
    with pytest.raises(OnvmError, match="already started"):
        srv.start()


def test_a_new_server_can_take_over_after_stop(make_server: Any,
                                               make_client: Any) -> None:
    first, _ = make_server()
    first.stop()
    make_server()
    assert make_client().request("echo")["args"] == {}


def test_stale_socket_is_replaced(make_server: Any, make_client: Any,
                                  sock_path: str) -> None:
    stale_socket(sock_path)
    make_server()
    assert make_client().request("echo", a=1)["args"] == {"a": 1}
    assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o600


def test_second_server_on_a_live_socket_is_refused(make_server: Any, make_client: Any,
                                                   sock_path: str) -> None:
    make_server()
    second, _ = make_server(start=False)
    with pytest.raises(OnvmError) as info:
        second.start()
    assert info.value.code == "busy"
    assert str(info.value) == (
        f"a manager named 't' is already running (socket {sock_path})")
    # The first one is untouched.
    assert os.path.exists(sock_path)
    assert make_client().request("echo")["args"] == {}


def test_foreign_listener_is_not_replaced(make_server: Any, sock_path: str,
                                          cleanup: list[Callable[[], object]]) -> None:
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cleanup.append(foreign.close)
    foreign.bind(sock_path)
    foreign.listen(1)
    srv, _ = make_server(start=False)
    with pytest.raises(OnvmError, match="already running") as info:
        srv.start()
    assert info.value.code == "busy"
    assert os.path.exists(sock_path)
    assert not os.path.exists(srv.lock_path)


def test_foreign_stream_listener_is_not_replaced(make_server: Any, sock_path: str,
                                                 cleanup: list[Callable[[], object]]
                                                 ) -> None:
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cleanup.append(foreign.close)
    foreign.bind(sock_path)
    foreign.listen(1)
    srv, _ = make_server(start=False)
    with pytest.raises(OnvmError, match="already running"):
        srv.start()


def test_regular_file_is_not_replaced(make_server: Any, sock_path: str) -> None:
    Path(sock_path).write_text("keep me")
    srv, _ = make_server(start=False)
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        srv.start()
    assert Path(sock_path).read_text() == "keep me"
    assert not os.path.exists(srv.lock_path)


def test_missing_directory(make_server: Any, tmp_path: Path) -> None:
    srv, _ = make_server(path=str(tmp_path / "nope" / "onvm-t.sock"), start=False)
    with pytest.raises(ConfigError, match="can't create lock file"):
        srv.start()


def test_context_manager(sock_path: str) -> None:
    rec = Recorder()
    with ControlServer(sock_path, rec.on_request, rec.on_close) as srv:
        assert srv.running
        with Client("t", path=sock_path) as client:
            assert client.request("echo")["args"] == {}
    assert not os.path.lexists(sock_path)
    assert client.closed


# -- requests and replies --------------------------------------------------------------

def test_request_reply(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    client = make_client()
    result = client.request("echo", service=2, name="fw")
    assert result["args"] == {"service": 2, "name": "fw"}
    assert result["pid"] == os.getpid()
    conn, req = rec.requests[0]
    assert req.id == 1 and req.op == "echo"
    assert conn.uid == os.geteuid()
    assert client.request("echo")["conn"] == result["conn"]
    assert rec.requests[1][1].id == 2


def test_op_is_positional_only(make_server: Any, make_client: Any) -> None:
    make_server()
    assert make_client().request("echo", op="x")["args"] == {"op": "x"}


def test_error_reply_is_reraised_with_context(make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    with pytest.raises(ConfigError) as info:
        client.request("fail")
    assert info.value.code == "bad_request"
    assert str(info.value) == "command fail: service 2: count must be positive"
    with pytest.raises(OnvmError) as other:
        client.request("nope")
    assert other.value.code == "not_found"
    assert str(other.value) == "command nope: unknown op 'nope'"


def test_unexpected_exception_is_internal_and_server_survives(
        make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    with pytest.raises(OnvmError) as info:
        client.request("boom")
    assert info.value.code == "internal"
    assert str(info.value) == "command boom: ValueError: oops"
    assert client.request("echo", x=1)["args"] == {"x": 1}


@pytest.mark.parametrize(("op", "message"), [
    ("huge", "reply to 'huge' can't be sent: message of"),
    ("not_a_dict", "handler for 'not_a_dict' returned list, not a dict"),
])
def test_bad_handler_results_are_internal(make_server: Any, make_client: Any,
                                          op: str, message: str) -> None:
    make_server()
    client = make_client()
    with pytest.raises(OnvmError) as info:
        client.request(op)
    assert info.value.code == "internal"
    assert info.value.message.startswith(message)
    assert client.request("echo")["args"] == {}


def test_undecodable_request_gets_id_0_and_connection_stays(
        make_server: Any, raw_socket: Any) -> None:
    make_server()
    sock = raw_socket()
    sock.send(b"not json")
    reply = json.loads(sock.recv(MAX_MESSAGE))
    assert reply == {"v": 1, "id": 0, "ok": False, "error": {
        "code": "protocol",
        "message": "message is not valid JSON at byte 0: Expecting value"}}
    reply = send_json(sock, {"v": 7, "id": 3, "op": "echo"})
    assert reply["id"] == 0
    assert reply["error"]["message"] == (
        "unsupported protocol version 7 (this side speaks 1)")
    reply = send_json(sock, {"v": 1, "id": 3, "op": "echo", "args": {}})
    assert reply["ok"] is True and reply["id"] == 3


def test_oversized_request(make_server: Any, raw_socket: Any) -> None:
    make_server()
    sock = raw_socket()
    sock.send(b" " * (MAX_MESSAGE + 5000))
    reply = json.loads(sock.recv(MAX_MESSAGE))
    assert reply["id"] == 0
    assert reply["error"] == {"code": "protocol",
                              "message": "message exceeds the 65536-byte limit"}


def test_client_encode_error_has_context(make_server: Any, make_client: Any) -> None:
    make_server()
    with pytest.raises(ProtocolError, match="^command echo: message of"):
        make_client().request("echo", s="x" * MAX_MESSAGE)


def test_concurrent_requests_on_one_client(make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                assert client.request("echo", n=n, i=i)["args"] == {"n": n, "i": i}
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not failures


def test_many_clients(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    clients = [make_client() for _ in range(20)]
    ids = {c.request("echo")["conn"] for c in clients}
    assert len(ids) == 20
    for c in clients:
        c.close()
    assert rec.wait_closed(20)


def test_request_timeout_then_recovery(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    client = make_client(timeout=0.2)
    with pytest.raises(OnvmError) as info:
        client.request("wait")
    assert info.value.code == "timeout"
    assert str(info.value) == "command wait: no reply within 0.2 s"
    rec.release.set()
    # The late reply to "wait" is skipped, not taken for this one's.
    assert client.request("echo", a=2)["args"] == {"a": 2}


# -- events ---------------------------------------------------------------------------

def test_event_during_request_is_queued(make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    assert client.request("notify", n=5) == {}
    assert client.next_event(0) == Event("note", {"n": 5})
    assert client.next_event(0) is None


def test_event_pushed_from_another_thread(make_server: Any, make_client: Any) -> None:
    srv, rec = make_server()
    client = make_client()
    client.request("echo")
    conn = rec.requests[0][0]
    assert srv.connections() == [conn]
    timer = threading.Timer(0.05, conn.send_event, ("stop", {"why": "test"}))
    timer.start()
    try:
        assert client.next_event(WAIT) == Event("stop", {"why": "test"})
    finally:
        timer.join()


def test_next_event_times_out(make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    start = time.monotonic()
    assert client.next_event(0.1) is None
    assert 0.09 <= time.monotonic() - start < 1.0


def test_waiter_sees_event_read_by_a_request(make_server: Any, make_client: Any) -> None:
    """An event read by request() in one thread wakes next_event() in another."""
    make_server()
    client = make_client()
    got: list[Event | None] = []
    waiter = threading.Thread(target=lambda: got.append(client.next_event(WAIT)))
    waiter.start()
    try:
        time.sleep(0.05)
        client.request("notify", n=1)
    finally:
        waiter.join()
    assert got == [Event("note", {"n": 1})]


def test_events_iterator_ends_when_server_stops(make_server: Any,
                                                make_client: Any) -> None:
    srv, rec = make_server()
    client = make_client()
    client.request("echo")
    conn = rec.requests[0][0]
    for i in range(3):
        conn.send_event("tick", {"i": i})
    srv.stop()
    assert [e.data["i"] for e in client.events()] == [0, 1, 2]
    with pytest.raises(ManagerNotRunning, match="closed the connection"):
        client.request("echo")


def test_events_survive_a_slow_reader(make_server: Any, make_client: Any) -> None:
    """More events than the socket buffer holds are queued and arrive in order."""
    _, rec = make_server()
    client = make_client()
    client.request("echo")
    conn = rec.requests[0][0]
    count = server_module.MAX_BACKLOG  # well beyond the kernel's buffer
    for i in range(count):
        assert conn.send_event("tick", {"i": i})
    got = [client.next_event(WAIT) for _ in range(count)]
    assert [e.data["i"] for e in got if e is not None] == list(range(count))
    assert client.request("echo")["args"] == {}


def test_stuck_reader_is_disconnected(make_server: Any, make_client: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_BACKLOG", 8)
    _, rec = make_server()
    client = make_client()
    client.request("echo")
    conn = rec.requests[0][0]
    sent = 0
    while conn.send_event("tick", {"pad": "x" * 1000}):
        sent += 1
        assert sent < 100000
    assert rec.wait_closed(1)
    assert rec.closed == [conn]
    assert conn.closed
    assert not conn.send_event("tick")


def test_send_event_rejects_unencodable_data(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    make_client().request("echo")
    with pytest.raises(ProtocolError):
        rec.requests[0][0].send_event("x", {"bad": object()})


# -- closing --------------------------------------------------------------------------

CHILD = """
import json, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(sys.argv[1])
sock.send(json.dumps({"v": 1, "id": 1, "op": "echo", "args": {}}).encode())
sock.recv(65536)
print("ready", flush=True)
time.sleep(60)
"""


def test_on_close_fires_once_when_client_is_sigkilled(
        make_server: Any, sock_path: str, cleanup: list[Callable[[], object]]) -> None:
    _, rec = make_server()
    child = subprocess.Popen([sys.executable, "-c", CHILD, sock_path],
                             stdout=subprocess.PIPE, text=True)

    def reap() -> None:
        if child.poll() is None:
            child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    cleanup.append(reap)

    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert not rec.closed
    killed_at = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    assert rec.wait_closed(1, timeout=1.0), "on_close not called within 1 s"
    assert time.monotonic() - killed_at < 1.0
    assert rec.closed[0].pid == child.pid
    assert rec.closed[0] is rec.requests[0][0]
    time.sleep(0.1)
    assert len(rec.closed) == 1


def test_on_close_once_on_client_close(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    client = make_client()
    client.request("echo")
    client.close()
    client.close()
    assert rec.wait_closed(1)
    time.sleep(0.05)
    assert rec.closed == [rec.requests[0][0]]
    with pytest.raises(ManagerNotRunning, match="closed"):
        client.request("echo")


def test_on_close_for_connection_without_requests(make_server: Any,
                                                  raw_socket: Any) -> None:
    _, rec = make_server()
    sock = raw_socket()
    sock.close()
    assert rec.wait_closed(1)


def test_server_side_close(make_server: Any, make_client: Any) -> None:
    _, rec = make_server()
    client = make_client()
    client.request("echo")
    conn = rec.requests[0][0]
    conn.close()
    assert rec.wait_closed(1)
    assert rec.closed == [conn]
    with pytest.raises(ManagerNotRunning):
        client.next_event(WAIT)


def test_stop_calls_on_close_for_open_connections(make_server: Any,
                                                  make_client: Any,
                                                  sock_path: str) -> None:
    srv, rec = make_server()
    clients = [make_client() for _ in range(3)]
    for c in clients:
        c.request("echo")
    srv.stop()
    assert len(rec.closed) == 3
    assert {c.conn_id for c in rec.closed} == {c.conn_id for c, _ in rec.requests}
    assert srv.connections() == []
    for c in clients:
        with pytest.raises(ManagerNotRunning):
            c.request("echo")


def test_stop_from_a_handler_still_replies(make_server: Any, make_client: Any,
                                           sock_path: str) -> None:
    srv, rec = make_server()
    client = make_client()
    assert client.request("shutdown") == {"bye": True}
    assert rec.wait_closed(1)
    srv.stop()  # joins the finished thread
    assert not os.path.lexists(sock_path)


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["racing", "after_close"])
def test_peer_with_other_uid_is_refused(make_server: Any, make_client: Any,
                                        delay: float) -> None:
    srv, rec = make_server(start=False)
    srv._allowed_uids = frozenset({123456})
    srv.start()
    client = make_client()
    # After the server has hung up, the send fails; the refusal is still read.
    time.sleep(delay)
    with pytest.raises(OnvmError) as info:
        client.request("echo")
    assert info.value.code == "forbidden"
    assert str(info.value) == (
        f"command echo: uid {os.geteuid()} may not use this manager")
    assert rec.requests == [] and rec.closed == []


# -- connecting -----------------------------------------------------------------------

def test_client_without_manager(sock_path: str) -> None:
    with pytest.raises(ManagerNotRunning) as info:
        Client("t")
    assert str(info.value) == (
        f"no manager named 't' is running (no socket at {sock_path})")
    assert info.value.code == "not_running"


def test_client_on_stale_socket(sock_path: str) -> None:
    stale_socket(sock_path)
    with pytest.raises(ManagerNotRunning, match="^no manager named 't' is running"):
        Client("t")


def test_client_default_path_uses_runtime_dir(make_server: Any) -> None:
    make_server()
    with Client("t") as client:
        assert client.request("echo")["args"] == {}


def test_client_rejects_bad_name() -> None:
    with pytest.raises(ConfigError):
        Client("../etc")


def test_client_fileno_is_readable_on_event(make_server: Any, make_client: Any) -> None:
    import select

    _, rec = make_server()
    client = make_client()
    client.request("echo")
    rec.requests[0][0].send_event("ping")
    readable, _, _ = select.select([client], [], [], WAIT)
    assert readable == [client]
    assert client.next_event(0) == Event("ping", {})


def test_close_wakes_a_waiting_thread(make_server: Any, make_client: Any) -> None:
    make_server()
    client = make_client()
    done = threading.Event()

    def wait() -> None:
        list(client.events())
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(0.05)
        client.close()
        assert done.wait(WAIT)
    finally:
        client.close()
        waiter.join(WAIT)


# -- caps -----------------------------------------------------------------------------

def test_connections_beyond_the_per_client_cap_are_refused_and_counted(make_server: Any, make_client: Any,
                                                                       sock_path: str,
                                                                       cleanup: list[Callable[[], object]]
                                                                       ) -> None:
    srv = ControlServer(sock_path, Recorder().on_request, lambda conn: None, max_per_client=3,
                        max_connections=100)
    cleanup.append(srv.stop)
    srv.start()
    clients = [make_client() for _ in range(3)]
    for c in clients:
        with pytest.raises(OnvmError, match="unknown op"):
            c.request("x")  # answered: each is served
    extra = make_client()
    with pytest.raises(OnvmError) as info:
        extra.request("echo")
    assert info.value.code == "busy" and "has 3 connections open" in str(info.value)
    assert srv.refused == 1
    # another process still gets in, and a closed connection frees its place
    child = subprocess.run([sys.executable, "-c", "from onvm.control.client import Client\n"
                            f"c = Client('t', path={sock_path!r}, timeout=2)\n"
                            "try:\n    c.request('x')\nexcept Exception as e:\n    print(e)"],
                           capture_output=True, text=True, timeout=30)
    assert "unknown op" in child.stdout, child.stdout + child.stderr
    clients[0].close()
    deadline = time.monotonic() + WAIT
    while srv._per_pid.get(os.getpid()) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    again = make_client()
    with pytest.raises(OnvmError, match="unknown op"):
        again.request("x")


def test_connections_beyond_the_total_cap_are_refused(make_server: Any, make_client: Any, sock_path: str,
                                                      cleanup: list[Callable[[], object]]) -> None:
    srv = ControlServer(sock_path, Recorder().on_request, lambda conn: None, max_connections=2)
    cleanup.append(srv.stop)
    srv.start()
    for c in (make_client(), make_client()):
        with pytest.raises(OnvmError, match="unknown op"):
            c.request("x")
    with pytest.raises(OnvmError) as info:
        make_client().request("x")
    assert info.value.code == "busy" and "2 connections are open" in str(info.value)
    assert srv.refused == 1
