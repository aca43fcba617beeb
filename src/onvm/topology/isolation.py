"""How an NF process is isolated: ``process``, ``namespace`` (bubblewrap), ``podman``, ``docker``.

Every backend turns the same :class:`Launch` (the ``onvm nf`` command line,
its environment, and the two files it shares with the manager: the region and
the control socket) into the command that starts it.  The NF inside sees the
region and the socket at the same paths as the manager, so nothing in the NF
knows how it is isolated.

- ``process``: a plain child process.
- ``namespace``: bubblewrap with new pid, mount, ipc, uts, network (and, where
  possible, cgroup) namespaces, a session of its own, no capabilities and
  ``no_new_privs`` (even when the manager runs as root); the root is an empty read-only tmpfs holding
  read-only binds of the system directories and the Python installation, a
  private /tmp, a fresh /proc and /dev, and the region and socket bound
  read-write.  Nothing else of the host is visible.
- ``podman``: a container from the image ``onvm image build`` makes (no
  registry), run as root with runc, no network, explicit nofile/nproc limits,
  a read-only root and the region and socket bind-mounted; never privileged:
  every capability dropped and ``no-new-privileges``.
- ``docker``: the same container with ``docker run``.

A runtime that is not installed is reported by name with the package that
brings it (:meth:`Isolation.check`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from onvm.errors import ConfigError, OnvmError

IMAGE = "localhost/onvm-nf:latest"
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


class RuntimeMissing(ConfigError):
    """The program an isolation mode needs is not installed or not usable."""


@dataclass
class Launch:
    """One NF process to start: its command, environment and what it shares with the manager."""

    argv: list[str]
    env: dict[str, str]
    shared: list[str]  # files bound read-write at the same path (region, socket)
    name: str  # a unique name (container name)
    image: str = IMAGE
    python_paths: list[str] = field(default_factory=list)  # read-only, for the namespace backend
    code_paths: list[str] = field(default_factory=list)  # the NF's own code (not in the image), read-only


def python_paths() -> list[str]:
    """Directories the NF's Python needs: the interpreter's prefixes and where onvm and numpy live."""
    import numpy

    import onvm

    dirs = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(onvm.__file__))),
            os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))}
    exe = os.path.realpath(sys.executable)
    dirs.add(os.path.dirname(os.path.dirname(exe)))
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if p and os.path.isdir(p):
            dirs.add(os.path.abspath(p))
    # drop directories inside others
    out: list[str] = []
    for d in sorted(dirs, key=len):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return sorted(out)


class Isolation:
    """A way to start an NF; subclasses fill in :meth:`command`."""

    name = "process"
    program: str | None = None
    install_hint = ""

    def check(self) -> None:
        """Raise RuntimeMissing if this machine cannot start NFs this way."""
        if self.program and shutil.which(self.program) is None:
            raise RuntimeMissing(f"isolation '{self.name}' needs {self.program}, which is not installed"
                                 f" (install it with: {self.install_hint})")

    def command(self, launch: Launch) -> list[str]:
        return list(launch.argv)

    def env(self, launch: Launch) -> dict[str, str]:
        """The environment of the launching process."""
        env = dict(os.environ)
        env.update(launch.env)
        return env

    def cleanup(self, launch: Launch) -> None:
        """Remove what a launch may leave behind after its process is gone."""


class ProcessIsolation(Isolation):
    """A plain child process."""


class NamespaceIsolation(Isolation):
    """bubblewrap: own pid, mount, ipc, uts and network namespaces; read-only root."""

    name = "namespace"
    program = "bwrap"
    install_hint = "apt-get install bubblewrap"
    SYSTEM = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
    ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")

    def command(self, launch: Launch) -> list[str]:
        # No capabilities (bwrap also sets no_new_privs), and a session of its own: an NF
        # cannot push keystrokes into the terminal it was started from (TIOCSTI).
        cmd = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--hostname", "onvm-nf"]
        for d in self.SYSTEM:
            if os.path.islink(d):
                cmd += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                cmd += ["--ro-bind", d, d]
        for f in self.ETC:
            cmd += ["--ro-bind-try", f, f]
        # /tmp first: binds below it (a script's directory, a test's runtime dir) go on top.
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for d in [*(launch.python_paths or python_paths()), *launch.code_paths]:
            cmd += ["--ro-bind", d, d]
        for f in launch.shared:
            cmd += ["--bind", f, f]
        for k, v in launch.env.items():
            cmd += ["--setenv", k, v]
        cmd += ["--chdir", "/", "--remount-ro", "/", "--", *launch.argv]
        return cmd


class ContainerIsolation(Isolation):
    """A container from the onvm image; podman and docker differ only in a few flags."""

    extra: tuple[str, ...] = ()

    def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when there is no such image."""
        r = subprocess.run([self.program or "", *self.extra, "image", "inspect", "--format",
                            "{{json .Config.Labels}}", image], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return None
        try:
            labels = json.loads(r.stdout.strip() or "null")
        except ValueError:
            return {}
        return labels if isinstance(labels, dict) else {}

    def check_image(self, image: str) -> None:
        """Raise ConfigError unless ``image`` exists and was built from this Python and package."""
        from onvm.topology.image import image_labels

        build = f"build it with 'onvm image build --runtime {self.name}' (no registry is needed)"
        labels = self.image_labels(image)
        if labels is None:
            raise ConfigError(f"isolation '{self.name}': image {image} not found; {build}")
        want = image_labels()
        if labels.get("onvm.python") != want["onvm.python"]:
            raise ConfigError(f"isolation '{self.name}': image {image} was built for the Python at "
                              f"{labels.get('onvm.python', '(unknown)')}, not {want['onvm.python']}; "
                              f"re{build}")
        if labels.get("onvm.package") != want["onvm.package"]:
            raise ConfigError(f"isolation '{self.name}': image {image} holds other onvm code than "
                              f"this installation (changed since it was built); re{build}")

    def command(self, launch: Launch) -> list[str]:
        cmd = [self.program or "", *self.extra, "run", "--rm", "--name", launch.name,
               "--network", "none", "--read-only", "--tmpfs", "/tmp", *ULIMITS,
               "--cap-drop", "all", "--security-opt", "no-new-privileges"]
        for f in launch.shared:
            cmd += ["-v", f"{f}:{f}"]
        for d in launch.code_paths:  # what is not in the image: an NF file's directory, a user's package
            cmd += ["-v", f"{d}:{d}:ro"]
        for k, v in launch.env.items():
            cmd += ["-e", f"{k}={v}"]
        cmd += [launch.image, *launch.argv]
        return cmd

    def cleanup(self, launch: Launch) -> None:
        subprocess.run([self.program or "", *self.extra, "rm", "-f", "-i", launch.name],
                       capture_output=True, timeout=60)


class PodmanIsolation(ContainerIsolation):
    """podman as root with runc (crun fails on this cgroup setup)."""

    name = "podman"
    program = "podman"
    install_hint = "apt-get install podman runc"
    extra = ("--runtime", "runc")

    def check(self) -> None:
        super().check()
        if shutil.which("runc") is None:
            raise RuntimeMissing("isolation 'podman' runs containers with runc, which is not installed"
                                 " (install it with: apt-get install runc)")


class DockerIsolation(ContainerIsolation):
    """docker: the same container through a Docker engine."""

    name = "docker"
    program = "docker"
    install_hint = "apt-get install docker.io, and start the engine"

    def check(self) -> None:
        super().check()
        r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            detail = (r.stderr.strip().splitlines() or ["no answer"])[-1]
            raise RuntimeMissing(f"isolation 'docker' needs a running Docker engine: {detail} "
                                 f"(install and start one with: {self.install_hint})")

    def cleanup(self, launch: Launch) -> None:
        subprocess.run(["docker", "rm", "-f", launch.name], capture_output=True, timeout=60)


BACKENDS: dict[str, type[Isolation]] = {
    "process": ProcessIsolation,
    "namespace": NamespaceIsolation,
    "podman": PodmanIsolation,
    "docker": DockerIsolation,
}


def backend(name: str) -> Isolation:
    """The backend for an isolation mode name."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ConfigError(f"unknown isolation '{name}' (expected one of: {', '.join(BACKENDS)})") from None


class ForkedProcess:
    """An NF forked by the fork server; the part of Popen the runner uses."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.args = ["forkserver", str(pid)]
        self._server = server
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def _exited(self, status: int) -> None:
        self.returncode = status
        self._done.set()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Starts example NFs by forking a process that has imported them already (see _forkserver)."""

    PREFIX = [sys.executable, "-S", "-m", "onvm.cli.main"]

    def __init__(self, env: dict[str, str], quiet: bool = False) -> None:
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        out = subprocess.DEVNULL if quiet else None
        full = dict(os.environ, **env, OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([*self.PREFIX[:3], "onvm.topology._forkserver", str(req_r), str(rep_w)],
                                     pass_fds=(req_r, rep_w), env=full, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=out, start_new_session=True)
        os.close(req_r)
        os.close(rep_w)
        self._replies = os.fdopen(self._rep_r, "r")
        self._lock = threading.Lock()
        self._children: dict[int, ForkedProcess] = {}
        self._new: list[ForkedProcess] = []  # forked, not yet handed to spawn()
        self._pid_ready = threading.Condition(self._lock)
        first = self._replies.readline()
        if not first:
            self.proc.wait()
            raise ConfigError(f"the NF fork server did not start (status {self.proc.returncode})")
        self._reader = threading.Thread(target=self._read, name="onvm-forkserver", daemon=True)
        self._reader.start()

    def handles(self, argv: list[str]) -> bool:
        return argv[:4] == self.PREFIX and len(argv) > 4 and argv[4] == "nf"

    def _read(self) -> None:
        for line in self._replies:
            msg = json.loads(line)
            with self._lock:
                if "pid" in msg:
                    # registered here, before the reader can see the same child's exit
                    child = ForkedProcess(int(msg["pid"]), self)
                    self._children[child.pid] = child
                    self._new.append(child)
                    self._pid_ready.notify_all()
                elif "exit" in msg:
                    gone = self._children.pop(int(msg["exit"]), None)
                    if gone is not None:
                        gone._exited(int(msg["status"]))
        with self._lock:  # the server is gone: so are our claims on its children
            for child in self._children.values():
                if child.returncode is None:
                    child._exited(-signal.SIGKILL)
            self._children.clear()
            self._pid_ready.notify_all()

    def spawn(self, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        req = json.dumps({"argv": argv[4:], "env": env}) + "\n"
        with self._lock:
            os.write(self._req_w, req.encode())
            while not self._new:
                if not self._reader.is_alive() or not self._pid_ready.wait(10):
                    raise OnvmError("the NF fork server stopped answering")
            return self._new.pop(0)

    def close(self) -> None:
        try:
            os.close(self._req_w)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
