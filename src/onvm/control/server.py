"""The manager's control server: one Unix SOCK_SEQPACKET socket, one thread.

Theory of operation
-------------------
:meth:`ControlServer.start` claims the socket path and starts a daemon thread
running a selector loop over the listening socket, every client connection
and a wake-up pipe.  The loop never times out: it sleeps until a client
connects, sends, goes away, or another thread wakes it.

* **Claiming the path.**  A ``<path>.lock`` file is flock'ed for the server's
  lifetime, so two managers starting under one name can't both decide that the
  socket there is stale and replace each other's.  The kernel drops the lock
  when its holder dies, however it dies.  A socket file found at the path
  whose owner is gone (nothing answers a connect) is removed; one that answers
  means another manager is running.  The socket is made 0600 before it is
  bound, so it never exists with wider permissions.
* **Requests.**  Each message is decoded and handed to ``on_request`` on the
  server thread; its dict becomes the reply.  An :class:`OnvmError` becomes an
  error reply with its code, any other exception code ``"internal"``; the
  loop carries on either way.  A message that can't be decoded gets an error
  reply with id 0 and the connection stays open.
* **Sending.**  Replies and events go through a per-connection outbox: a send
  that would block is queued and flushed when the socket becomes writable, so
  a slow peer never stalls the loop or the thread calling ``send_event``.  A
  peer that lets :data:`MAX_BACKLOG` messages pile up is disconnected.
* **Closing.**  A peer closing its end, or dying by any signal, makes its
  socket readable with EOF at once; the loop closes the connection and calls
  ``on_close`` exactly once.  This is how the manager learns that an NF died.
  ``on_close`` is called for every accepted connection, whether or not it
  ever sent a request, and also for each connection still open at ``stop()``.

``on_request`` and ``on_close`` always run on the server thread, one at a
time; they must not block for long, since every other client waits meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Self

from onvm.control.protocol import (
    MAX_MESSAGE,
    Request,
    decode_request,
    encode,
    make_error,
    make_event,
    make_reply,
)
from onvm.errors import ConfigError, OnvmError, ProtocolError

__all__ = ["MAX_BACKLOG", "MAX_CONNECTIONS", "MAX_PER_CLIENT", "Connection", "ControlServer"]

log = logging.getLogger(__name__)

#: Outgoing messages queued on one connection before the peer counts as stuck.
MAX_BACKLOG = 1024
#: Open connections at once, in all and per client process (an NF holds two, a CLI
#: command one; the manager's own web server one per request it forwards).
MAX_CONNECTIONS = 512
MAX_PER_CLIENT = 32

# Error texts are capped so that any error reply fits in one message, even
# with every character escaped by the JSON encoder.
_MAX_ERROR_TEXT = 8000

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SOCKET_NAME_RE = re.compile(r"onvm-(.+)\.sock")

_LISTENER = "listener"
_WAKE = "wake"

# errnos of accept() that leave the connection in the backlog: the listener
# stays readable, so retrying at once would spin.
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                     errno.ENOMEM})


class Connection:
    """One accepted client, as seen by ``on_request`` and ``on_close``.

    ``pid``, ``uid`` and ``gid`` are the peer's credentials when it connected
    (SO_PEERCRED).  ``data`` is free for the server's owner, e.g. to remember
    which NF registered on this connection.
    """

    def __init__(self, server: ControlServer, sock: socket.socket, conn_id: int,
                 pid: int, uid: int, gid: int) -> None:
        self.conn_id = conn_id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.data: dict[str, Any] = {}
        self._server = server
        self._sock = sock
        self._lock = threading.Lock()  # guards the socket, outbox and flags
        self._outbox: deque[bytes] = deque()
        self._closed = False  # socket closed; set only by the server thread
        self._doomed = False  # peer gone or stuck; the server thread will close

    @property
    def closed(self) -> bool:
        """True once the connection is closed or about to be."""
        return self._closed or self._doomed

    def send_event(self, name: str, data: dict[str, Any] | None = None) -> bool:
        """Push an event to the peer; thread-safe, never blocks.

        Returns False if the connection is closed (or found to be), in which
        case ``on_close`` is or will be called for it.  Raises ProtocolError
        if ``data`` can't be encoded.
        """
        return self._send(encode(make_event(name, data)))

    def backlog(self) -> int:
        """Messages queued for the peer and not sent yet."""
        with self._lock:
            return len(self._outbox)

    def close(self) -> None:
        """Disconnect the peer; ``on_close`` follows on the server thread."""
        with self._lock:
            if self._closed:
                return
            self._doomed = True
        self._server._schedule(self)

    def _send(self, msg: bytes) -> bool:
        with self._lock:
            if self._closed or self._doomed:
                return False
            queued = False
            if not self._outbox:
                try:
                    self._sock.send(msg, socket.MSG_DONTWAIT)
                    return True
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._doomed = True
            if not self._doomed:
                if len(self._outbox) >= MAX_BACKLOG:
                    log.warning("control connection %d (pid %d) is not reading; "
                                "disconnecting it", self.conn_id, self.pid)
                    self._doomed = True
                else:
                    self._outbox.append(msg)
                    queued = True
        # Either the server must watch for writability or close the socket.
        self._server._schedule(self)
        return queued

    def _flush(self) -> bool:
        """Send what is queued; True when the outbox is empty. Server thread only."""
        with self._lock:
            while self._outbox and not self._doomed:
                try:
                    self._sock.send(self._outbox[0], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError:
                    self._doomed = True
                    break
                self._outbox.popleft()
            return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<Connection {self.conn_id} pid={self.pid} uid={self.uid} "
                f"{state}>")


class ControlServer:
    """Serves the control protocol on the Unix socket at ``path``.

    ``on_request(conn, request)`` returns the reply's result dict or raises;
    ``on_close(conn)`` is called once per accepted connection when it closes.
    Both run on the server thread.  A connection beyond ``max_connections``
    open at once, or beyond ``max_per_client`` from one process, is refused
    with a ``busy`` error and counted in :attr:`refused`.
    """

    def __init__(self, path: str,
                 on_request: Callable[[Connection, Request], dict[str, Any]],
                 on_close: Callable[[Connection], None], *,
                 max_connections: int = MAX_CONNECTIONS, max_per_client: int = MAX_PER_CLIENT) -> None:
        self.path = path
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.refused = 0  # connections refused for a cap
        self._on_request = on_request
        self._on_close = on_close
        # Root may always connect: it can read the region anyway.
        self._allowed_uids = frozenset({0, os.geteuid()})
        self._lock = threading.Lock()  # guards the fields below
        self._state = "new"  # -> "running" -> "stopped"
        self._pending: set[Connection] = set()
        self._conns: dict[int, Connection] = {}
        self._per_pid: dict[int, int] = {}  # open connections of each client process
        self._wake_w = -1
        # Owned by the server thread once it runs.
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r = -1
        self._lock_fd = -1
        self._socket_id: tuple[int, int] | None = None
        self._next_conn_id = 1

    @property
    def lock_path(self) -> str:
        """The lock file held while the server runs."""
        return self.path + ".lock"

    @property
    def running(self) -> bool:
        """True between a successful start() and stop()."""
        return self._state == "running"

    def connections(self) -> list[Connection]:
        """A snapshot of the open connections."""
        with self._lock:
            return list(self._conns.values())

    # -- starting and stopping -------------------------------------------------

    def start(self) -> None:
        """Claim the socket path and start serving in a daemon thread.

        Raises OnvmError with code "busy" if another server owns the path, and
        ConfigError if the path can't be used.  On failure nothing is left
        behind.
        """
        with self._lock:
            if self._state != "new":
                raise OnvmError(f"control server on {self.path} was already "
                                "started", code="busy")
            self._state = "starting"
        try:
            self._acquire_lock()
            self._remove_stale_socket()
            self._listen()
            self._selector = selectors.DefaultSelector()
            self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with self._lock:
                self._wake_w = wake_w
            assert self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"onvm-control:{self.path}")
            with self._lock:
                self._state = "running"
            self._thread.start()
        except BaseException:
            self._release()
            with self._lock:
                self._state = "stopped"
            raise

    def stop(self) -> None:
        """Stop serving: close every connection (calling ``on_close`` for
        each), remove the socket file and wait for the server thread.

        Idempotent.  Called from ``on_request`` or ``on_close`` it returns at
        once and the server stops when the handler returns.
        """
        with self._lock:
            if self._state in ("new", "starting"):
                self._state = "stopped"
                return
            self._state = "stopped"
            self._wake_locked()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _busy(self) -> OnvmError:
        match = _SOCKET_NAME_RE.fullmatch(os.path.basename(self.path))
        who = f"a manager named '{match.group(1)}'" if match else "a manager"
        return OnvmError(f"{who} is already running (socket {self.path})",
                         code="busy")

    def _acquire_lock(self) -> None:
        lock_path = self.lock_path
        # A stopping server unlinks its lock file; if that happens between our
        # open and flock, we hold a lock on an orphan and must try again.
        for _ in range(16):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                             | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                raise ConfigError(f"can't create lock file {lock_path}: "
                                  f"{exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = os.fstat(fd)
                now = os.stat(lock_path)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            except FileNotFoundError:
                os.close(fd)
                continue
            except OSError as exc:
                os.close(fd)
                raise ConfigError(f"can't lock {lock_path}: "
                                  f"{exc.strerror or exc}") from None
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                self._lock_fd = fd
                return
            os.close(fd)
        raise self._busy()

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{self.path} exists and is not a socket; "
                              "refusing to replace it")
        probe = socket.socket(socket.AF_UNIX,
                              socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # its owner is gone: stale
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                raise self._busy() from None  # alive, though not one of ours
            raise OnvmError(f"can't tell whether the socket {self.path} is in "
                            f"use: {exc.strerror or exc}", code="busy") from None
        else:
            raise self._busy()
        finally:
            probe.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        log.info("removed stale control socket %s", self.path)

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # Linux creates the socket file with the socket inode's mode (less
            # the umask): set it first so the file is never wider than 0600.
            os.fchmod(sock.fileno(), 0o600)
            try:
                sock.bind(self.path)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise self._busy() from None
                raise ConfigError(f"can't create control socket {self.path}: "
                                  f"{exc.strerror or exc}") from None
            st = os.lstat(self.path)
            self._socket_id = (st.st_dev, st.st_ino)
            if stat.S_IMODE(st.st_mode) != 0o600:
                # Not listening yet, so nobody can connect in the meantime.
                os.chmod(self.path, 0o600)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock

    def _unlink_socket(self) -> None:
        # Remove the file only if it is still ours, not a successor's.
        if self._socket_id is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.path)
        except OSError:
            pass
        self._socket_id = None

    def _release(self) -> None:
        """Free everything start() acquired, in an order safe for successors."""
        # Unlink while still listening: a successor that finds the name free
        # can't have it removed from under it by us later.
        self._unlink_socket()
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            wake_w, self._wake_w = self._wake_w, -1
        for fd in (self._wake_r, wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = -1
        if self._lock_fd >= 0:
            try:
                held = os.fstat(self._lock_fd)
                now = os.stat(self.lock_path)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- cross-thread wake-ups -------------------------------------------------

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so the loop is awake anyway

    def _schedule(self, conn: Connection) -> None:
        """Ask the server thread to look at ``conn`` (outbox or closing)."""
        with self._lock:
            self._pending.add(conn)
            self._wake_locked()

    # -- the loop (server thread only) ----------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while self._state == "running":
                for key, mask in self._selector.select():
                    try:
                        self._dispatch_event(key.data, mask)
                    except Exception:
                        log.exception("control server: error handling %r",
                                      key.data)
                self._process_pending()
        except Exception:
            log.exception("control server loop failed; shutting down")
        finally:
            self._shutdown()

    def _dispatch_event(self, tag: object, mask: int) -> None:
        if tag == _LISTENER:
            self._accept()
        elif tag == _WAKE:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        elif isinstance(tag, Connection):
            if mask & selectors.EVENT_WRITE and tag._flush():
                self._watch(tag)
            if tag._doomed:
                self._close(tag)
            elif mask & selectors.EVENT_READ and not tag._closed:
                self._read(tag)

    def _process_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        for conn in pending:
            if conn._closed:
                continue
            if conn._doomed:
                self._close(conn)
            else:
                self._watch(conn)

    def _watch(self, conn: Connection) -> None:
        """Watch for writability exactly while the outbox holds something."""
        assert self._selector is not None
        with conn._lock:
            if conn._closed:
                return
            events = selectors.EVENT_READ
            if conn._outbox:
                events |= selectors.EVENT_WRITE
            self._selector.modify(conn._sock, events, conn)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("control server: accept failed: %s", exc)
            if exc.errno in _ACCEPT_RESOURCE_ERRNOS:
                time.sleep(0.05)
            return
        try:
            sock.setblocking(False)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    _PEERCRED.size)
            pid, uid, gid = _PEERCRED.unpack(creds)
        except OSError as exc:
            log.warning("control server: can't read peer credentials: %s", exc)
            sock.close()
            return
        if uid not in self._allowed_uids:
            log.warning("control server: refused pid %d with uid %d", pid, uid)
            self._refuse(sock, "forbidden", f"uid {uid} may not use this manager")
            return
        with self._lock:
            total, mine = len(self._conns), self._per_pid.get(pid, 0)
        if total >= self.max_connections or mine >= self.max_per_client:
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, 8th... refusal
                log.warning("control server: refused a connection of pid %d (%d refused so far)",
                            pid, self.refused)
            why = (f"{self.max_connections} connections are open" if total >= self.max_connections else
                   f"process {pid} has {self.max_per_client} connections open")
            self._refuse(sock, "busy", f"too many connections: {why}")
            return
        conn = Connection(self, sock, self._next_conn_id, pid, uid, gid)
        self._next_conn_id += 1
        with self._lock:
            self._conns[conn.conn_id] = conn
            self._per_pid[pid] = mine + 1
        self._selector.register(sock, selectors.EVENT_READ, conn)

    @staticmethod
    def _refuse(sock: socket.socket, code: str, text: str) -> None:
        try:
            sock.send(encode(make_error(0, code, text)), socket.MSG_DONTWAIT)
        except OSError:
            pass
        sock.close()

    def _read(self, conn: Connection) -> None:
        try:
            # One byte more than the limit tells an oversized message (the
            # kernel truncates it to the buffer) from one exactly at the limit.
            msg = conn._sock.recv(MAX_MESSAGE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)  # ECONNRESET and the like: the peer is gone
            return
        if not msg:
            # EOF.  (An empty SEQPACKET message reads the same; no legitimate
            # client sends one.)
            self._close(conn)
            return
        if len(msg) > MAX_MESSAGE:
            error = ProtocolError(f"message exceeds the {MAX_MESSAGE}-byte limit")
            conn._send(self._encode_error(0, error))
            return
        try:
            request = decode_request(msg)
        except ProtocolError as exc:
            conn._send(self._encode_error(0, exc))
            return
        conn._send(self._handle(conn, request))

    def _handle(self, conn: Connection, request: Request) -> bytes:
        """Run on_request and encode whatever comes out of it."""
        try:
            result = self._on_request(conn, request)
        except OnvmError as exc:
            return self._encode_error(request.id, exc)
        except Exception as exc:
            log.exception("control server: handler for %r failed", request.op)
            return self._encode_error(
                request.id,
                OnvmError(f"{type(exc).__name__}: {exc}", code="internal"))
        if result is None:
            result = {}
        if not isinstance(result, dict):
            return self._encode_error(request.id, OnvmError(
                f"handler for {request.op!r} returned "
                f"{type(result).__name__}, not a dict", code="internal"))
        try:
            return encode(make_reply(request, result))
        except ProtocolError as exc:
            return self._encode_error(request.id, OnvmError(
                f"reply to {request.op!r} can't be sent: {exc}", code="internal"))

    @staticmethod
    def _encode_error(req_id: int, exc: OnvmError) -> bytes:
        text = str(exc)
        if len(text) > _MAX_ERROR_TEXT:
            text = text[:_MAX_ERROR_TEXT] + "..."
        return encode(make_error(req_id, exc.code, text))

    def _close(self, conn: Connection) -> None:
        """Close ``conn`` and call on_close, once."""
        assert self._selector is not None
        with conn._lock:
            if conn._closed:
                return
            conn._closed = True
            conn._outbox.clear()
            try:
                self._selector.unregister(conn._sock)
            except (KeyError, ValueError):
                pass
            conn._sock.close()
        with self._lock:
            if self._conns.pop(conn.conn_id, None) is not None:
                left = self._per_pid.pop(conn.pid, 1) - 1
                if left:
                    self._per_pid[conn.pid] = left
            self._pending.discard(conn)
        try:
            self._on_close(conn)
        except Exception:
            log.exception("control server: on_close failed for %r", conn)

    def _shutdown(self) -> None:
        with self._lock:
            self._state = "stopped"
            conns = list(self._conns.values())
        # Stop new arrivals first, then say goodbye to the current ones.
        self._unlink_socket()
        if self._listener is not None and self._selector is not None:
            try:
                self._selector.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._listener = None
        for conn in conns:
            conn._flush()  # best effort: e.g. the reply to a "shutdown" request
            self._close(conn)
        self._release()
