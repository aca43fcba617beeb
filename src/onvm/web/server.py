"""The manager's HTTP endpoint: stdlib ``ThreadingHTTPServer``, no dependency.

Why the standard library: the endpoint serves a handful of operators and a
scraper, answers from a sample that is already computed (see sampler.py), and
pushes live updates as server-sent events, which are plain chunks of text on
an open response.  A thread per connection costs nothing at that scale, and
it keeps the manager installable with numpy alone.  The server threads hold
the GIL only while formatting answers; the packet path runs in native threads
that never take it, and the control socket's thread is never blocked by a web
client because reads never take the manager's lock.

Caps: at most :data:`MAX_CONNECTIONS` connections and :data:`MAX_STREAMS`
live streams at once, and a client at most a few of each (a client is its
address; on a loopback address, the address and the user owning the peer's
socket, as the kernel's socket diagnostics tell it), so one local user
cannot take every place.  A connection over a cap gets ``503`` at once and is
closed; the refusals are counted (``refused`` in the status).

Files: the change token lives in ``<runtime dir>/onvm-<name>.web-token``
(mode 0600, removed at exit); the dashboard's files are in ``static/``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from onvm.control.ops import Op
from onvm.errors import ConfigError
from onvm.paths import runtime_dir
from onvm.web.api import MAX_BODY, Api, Capturer, Request, Response, error, sse_frame
from onvm.web.sampler import EventSource, Sampler

MAX_STREAMS = 16  # live streams at once, in all
MAX_STREAMS_PER_CLIENT = 4
MAX_CONNECTIONS = 128  # open HTTP connections at once, in all
MAX_CONNECTIONS_PER_CLIENT = 16
HEARTBEAT = 15.0
STATIC = {  # path -> (file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); ``[::1]:PORT`` for IPv6."""
    host, port_s = "127.0.0.1", text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        host = host or "127.0.0.1"
    if not port_s.isdecimal() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"--web {text}: expected HOST:PORT with a port in 0..65535")
    return host, int(port_s)


def token_path(name: str) -> str:
    return os.path.join(runtime_dir(), f"onvm-{name}.web-token")


def _write_token(path: str, token: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # one left by a manager that died; ours is made fresh, 0600 from the start
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NO_COOKIE = 0xFFFFFFFF


def _peer_uid(sock: socket.socket) -> int | None:
    """The user owning the other end of a loopback TCP connection, as the kernel records it
    (one exact sock_diag lookup of the peer's socket); None when it cannot be told."""
    ours, theirs = sock.getsockname(), sock.getpeername()

    def addr(text: str) -> bytes:
        b = ipaddress.ip_address(text.split("%")[0]).packed
        return b + bytes(16 - len(b))

    sockid = struct.pack("!HH16s16s", theirs[1], ours[1], addr(theirs[0]), addr(ours[0])) \
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    req = struct.pack("=BBBBI", sock.family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 1, 1, 0) + req  # NLM_F_REQUEST
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(msg)
            data = nl.recv(8192)
    except OSError:
        return None
    # nlmsghdr (16), then inet_diag_msg: 4 bytes, the socket id (48), expires, rqueue, wqueue, uid
    if len(data) < 16 + 4 + 48 + 16 or struct.unpack_from("=H", data, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return None
    uid: int = struct.unpack_from("=I", data, 16 + 4 + 48 + 12)[0]
    return uid


def client_key(sock: socket.socket, address: Any) -> str:
    """Who a connection is, for the caps: its address, and on loopback its user too."""
    host = str(address[0]) if isinstance(address, tuple) and address else "?"
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        uid = _peer_uid(sock)
        return f"{host} uid {uid if uid is not None else '?'}"
    return host


class _Caps:
    """Counts of something (connections, streams) in all and per client, under caps."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.refused = 0
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, key: str) -> str:
        """'' when one more is allowed (and taken), else why not."""
        with self._lock:
            mine = self._held.get(key, 0)
            if sum(self._held.values()) >= self.total:
                why = f"at most {self.total} at once"
            elif mine >= self.per_client:
                why = f"at most {self.per_client} per client"
            else:
                self._held[key] = mine + 1
                return ""
            self.refused += 1
            return why

    def leave(self, key: str) -> None:
        with self._lock:
            left = self._held.pop(key, 1) - 1
            if left > 0:
                self._held[key] = left


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    web: WebServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a browser that went away mid-answer is not worth a traceback

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, within the connection caps (else 503 at once)."""
        key = client_key(request, client_address)
        why = self.web.connections.enter(key)
        if why:
            text = f"too many connections: {why}\n".encode()
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
            self.shutdown_request(request)
            return
        threading.Thread(target=self._serve, args=(request, client_address, key), daemon=True,
                         name="onvm-web-conn").start()

    def _serve(self, request: Any, client_address: Any, key: str) -> None:
        self.web.local.client = key  # the handler's streams count against this client
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.web.connections.leave(key)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "onvm"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _request(self) -> Request | None:
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = b""
        length = headers.get("content-length", "0")
        if not length.isdecimal():
            self._send(error(400, "bad Content-Length"))
            return None
        if int(length) > MAX_BODY:
            self._send(error(413, f"the body is larger than {MAX_BODY} bytes"))
            return None
        if int(length):
            body = self.rfile.read(int(length))
        return Request(self.command, parts.path, dict(parse_qsl(parts.query)), headers, body)

    def _send(self, r: Response) -> None:
        self.send_response(r.status)
        self.send_header("Content-Type", r.content_type)
        self.send_header("Content-Length", str(len(r.body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **r.headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(r.body)

    def _dispatch(self) -> None:
        web = self.server.web
        req = self._request()
        if req is None:
            return
        if req.path in STATIC and req.method in ("GET", "HEAD"):
            refused = web.api.refuse_host(req)
            if refused is not None:
                self._send(refused)
                return
            name, ctype = STATIC[req.path]
            self._send(Response(200, web.static(name), ctype))
            return
        if req.path == "/api/stream" and req.method == "GET":
            self._stream(req)
            return
        self._send(web.api.handle(req))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _stream(self, req: Request) -> None:
        web = self.server.web
        refused = web.api.refuse_host(req)
        if refused is not None:
            self._send(refused)
            return
        client = getattr(web.local, "client", "?")
        why = web.streams.enter(client)
        if why:
            self._send(error(503, f"too many live streams: {why}"))
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            sampler = web.sampler
            since = int(req.headers.get("last-event-id", "0") or 0) if req.headers.get(
                "last-event-id", "").isdecimal() else 0
            seq = -1
            quiet = 0.0
            while not sampler.stopped:
                new = sampler.wait(seq, 1.0)
                out = b""
                if new != seq:
                    seq = new
                    s = sampler.latest()
                    out += sse_frame("sample", {"time": s["time"], "status": s["status"],
                                                "services": s["services"], "chains": s["chains"]})
                    for ev in sampler.events(since):
                        out += sse_frame("log", ev, ev["id"])
                        since = ev["id"]
                    quiet = 0.0
                else:
                    quiet += 1.0
                    if quiet >= HEARTBEAT:
                        out, quiet = b": keep-alive\n\n", 0.0
                if out:
                    self.wfile.write(out)
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        finally:
            web.streams.leave(client)
            self.close_connection = True


class WebServer:
    """The web endpoint of manager ``name`` (see the module docstring).

    ``source`` and ``log`` feed the sampler (see sampler.py); ``control`` runs
    an operation as a client of the manager (the typed client on its socket); ``capture`` runs
    a capture for download (see ``POST /api/capture``)."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *,
                 source: Callable[[], dict[str, Any] | None], log: EventSource,
                 control: Callable[[Op], dict[str, Any]], capture: Capturer | None = None,
                 interval: float = 0.5) -> None:
        self.host = host
        self.token = secrets.token_urlsafe(32)
        self.token_path = token_path(name)
        self.sampler = Sampler(source, log, interval)
        self.connections = _Caps(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT)
        self.streams = _Caps(MAX_STREAMS, MAX_STREAMS_PER_CLIENT)
        self.local = threading.local()
        self._static: dict[str, bytes] = {}
        server_cls = type("_Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host
                                                  else socket.AF_INET})
        try:
            self.httpd = server_cls((host, port), _Handler)
        except OSError as e:
            what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
            raise ConfigError(f"--web {host}:{port}: the address {what}") from None
        self.httpd.web = self
        self.port = self.httpd.server_address[1]
        self.api = Api(self.sampler, control, self.token, self._allowed_hosts(), capture)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="onvm-web", daemon=True)
        self._started = False

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}/"

    def _allowed_hosts(self) -> set[str] | None:
        try:
            if ipaddress.ip_address(self.host).is_unspecified:
                return None  # bound to every address: the operator chose to be reachable by any name
        except ValueError:
            pass
        h = f"[{self.host}]" if ":" in self.host else self.host
        names = {h, "localhost", "127.0.0.1", "[::1]"}
        return {f"{n}:{self.port}".lower() for n in names} | ({h.lower()} if self.port == 80 else set())

    def static(self, name: str) -> bytes:
        if name not in self._static:
            self._static[name] = resources.files("onvm.web").joinpath("static", name).read_bytes()
        return self._static[name]

    def refused(self) -> dict[str, int]:
        """Connections and streams refused for a cap so far."""
        return {"connections": self.connections.refused, "streams": self.streams.refused}

    def start(self) -> None:
        _write_token(self.token_path, self.token)
        self.sampler.start()
        self._thread.start()
        self._started = True

    def stop(self) -> None:
        """Stop serving; live streams end within a second.  Safe to call twice."""
        self.sampler.stop()
        if self._started:
            self.httpd.shutdown()
            self._thread.join(timeout=2)
            self._started = False
        self.httpd.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.token_path)
