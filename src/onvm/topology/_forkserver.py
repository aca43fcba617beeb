"""A warm parent for NF processes: it imports the NF code once and forks each NF from it.

Theory of operation
-------------------
Most of an NF's start is Python importing numpy and onvm (about 100 ms of CPU,
more on a busy machine).  ``onvm run`` starts this server once, with
``python -S``, before any NF; it imports everything the example NFs need and
then waits.  To start an NF the runner sends one JSON line ``{"argv": [...],
"env": {...}}`` on the request pipe; the server forks, and the child takes the
environment, starts a new session and runs ``onvm nf ...`` in-process (the
argv after ``-m onvm.cli.main``).  The server answers ``{"pid": N}`` at once and,
when a child exits, ``{"exit": N, "status": S}`` (S as Popen's returncode), in
that order for any one child: the server is single-threaded, and SIGCHLD only
wakes its select loop.  When the request pipe closes, the server exits; its
children run on until their manager stops them, like NFs started any other way.

The server has no threads of its own (numpy's BLAS is held to one thread), so
forking it is safe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys


def _preload() -> None:
    import numpy  # noqa: F401

    import onvm.cli.main  # noqa: F401
    import onvm.nf._batch  # noqa: F401
    import onvm.nf._nf  # noqa: F401
    import onvm.nfs._cli  # noqa: F401
    from onvm import nfs

    for name in nfs.NAMES:
        nfs.load(name)


def _child(req: dict[str, object], fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)
    signal.set_wakeup_fd(-1)
    for s in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    # as in a new interpreter: a closed pipe is an error to handle (onvm._streams), not death
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.setsid()
    env = req.get("env") or {}
    assert isinstance(env, dict)
    os.environ.update({str(k): str(v) for k, v in env.items()})
    # A new interpreter would put PYTHONPATH first on sys.path: an NF's own code (a file's
    # directory, a user's package) is found as it would be.
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
    code = 1
    try:
        from onvm.cli.main import main

        sys.argv = ["onvm", *argv]
        sys.orig_argv = [sys.executable, "-m", "onvm.cli.main", *argv]  # what a new interpreter would see
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # report it like an uncaught exception would, then leave
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(rfd: int, wfd: int) -> None:
    _preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when NFs stop
    out = os.fdopen(wfd, "w", buffering=1)
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    buf = ""
    while True:
        try:
            ready, _, _ = select.select([rfd, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 512)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                out.write(json.dumps({"exit": pid, "status": os.waitstatus_to_exitcode(status)}) + "\n")
        if rfd in ready:
            chunk = os.read(rfd, 65536).decode()
            if not chunk:
                return
            buf += chunk
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req, (rfd, wfd, wake_r, wake_w))
                out.write(json.dumps({"pid": pid}) + "\n")


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
