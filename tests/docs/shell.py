"""The README's shell examples, run as a reader would run them, in a sandbox the test provides.

Theory of operation
-------------------
The marked shell blocks of one top-level section run in order in one working
directory, a temporary one holding a link to the repository's ``examples/``
and the section's blocks marked ``file=NAME``.  ``onvm`` and ``python`` are
this build's (first on PATH), and ``ONVM_RUNTIME_DIR`` is private, so the
default manager name ``onvm`` belongs to the test alone.

Each line runs in bash from the working directory and must succeed.  A
command that runs until it is stopped (``onvm manager``, ``onvm nf``,
``onvm run`` of a file that does not end by itself, a line ending in ``&``)
starts in the background, as in a terminal of its own, and the next line runs once what it
starts is up: a manager answering, one more NF running, a topology's NFs all
running.  When the section's blocks are done, what still runs is stopped the
way the README says (``onvm stop`` for a manager, which stops its NFs; Ctrl-C
for ``onvm run``; SIGTERM for the rest); everything must exit cleanly and
leave no runtime file behind.

A ``console`` block shows ``$ command`` lines, each followed by the output
the README promises; the command's output (stdout, then stderr) must be that.

Marker options (``<!-- test: option; option=value -->``):

``file=NAME``       write the block into the working directory as NAME
``manager=ARGS``    a manager ``onvm manager ARGS`` runs for the section
``ports=P,Q``       TCP ports the section names: each is replaced by a free one
``root``            needs root, ip, ethtool and ping (skipped otherwise); the
                    testbed gets its own prefix (``onvm testbed up --prefix T``,
                    T-a and T-b for onvm-a and onvm-b)
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onvm.control.client import Client
from onvm.errors import OnvmError
from tests.docs.readme import README, Block, python_script

ROOT = README.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logical_lines(code: str) -> list[str]:
    """Command lines: continuations joined, comments and blank lines dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line.strip())
    return out


@dataclass
class Background:
    line: str
    proc: subprocess.Popen[bytes]
    log: Path
    kind: str  # manager, nf, run, other
    name: str = ""  # the manager it belongs to

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Sandbox:
    """A working directory, a private runtime directory, and what runs in the background."""

    blocks: list[Block]
    tmp: Path
    substitutions: dict[str, str] = field(default_factory=dict)
    running: list[Background] = field(default_factory=list)
    testbed: str = ""  # its prefix, when the section makes one

    def __post_init__(self) -> None:
        self.cwd = self.tmp / "work"
        self.cwd.mkdir()
        (self.cwd / "examples").symlink_to(ROOT / "examples")
        self.runtime = Path(os.environ["ONVM_RUNTIME_DIR"])
        self.env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONPATH=str(ROOT))
        opts: dict[str, str] = {}
        for b in self.blocks:
            opts.update(b.options)
        for port in filter(None, opts.get("ports", "").split(",")):
            self.substitutions[port.strip()] = str(free_port())
        if "root" in opts:
            if os.geteuid() != 0 or any(shutil.which(t) is None for t in ("ip", "ethtool", "ping")):
                raise SkipSection("needs root and ip, ethtool and ping (make deps installs them)")
            prefix = f"t{uuid.uuid4().hex[:7]}"
            self.testbed = prefix
            self.substitutions.update({"onvm testbed up": f"onvm testbed up --prefix {prefix}",
                                       "onvm testbed down": f"onvm testbed down --prefix {prefix}",
                                       "onvm-a": f"{prefix}-a", "onvm-b": f"{prefix}-b"})
        self.manager_args = opts.get("manager")

    # ---- running ---------------------------------------------------------------
    def text(self, code: str) -> str:
        for old, new in self.substitutions.items():
            code = code.replace(old, new)
        return code

    def run_section(self) -> None:
        if self.manager_args is not None:
            self.start(f"onvm manager {self.manager_args}")
        python = [b for b in self.blocks if b.lang == "python"]
        if python:
            self.python(python)
        for b in self.blocks:
            if "file" in b.options:
                (self.cwd / b.options["file"]).write_text(self.text(b.code))
            elif b.lang == "console":
                self.console(b)
            elif b.lang in ("sh", "shell", "bash"):
                for line in logical_lines(self.text(b.code)):
                    if self.long_running(line):
                        self.start(line)
                    else:
                        self.foreground(line, b)

    def python(self, group: list[Block]) -> None:
        """A section's Python blocks as one script.  With a manager, the script runs beside
        it: a client that ends by itself must end well; an NF in it (nf.run()) runs until
        the manager stops, and the script must then reach the end of its blocks."""
        script = self.tmp / "readme_examples.py"
        script.write_text(python_script(group))
        command = f"{shlex.quote(sys.executable)} {script}"
        if self.manager_args is None:
            self.foreground(command, group[0])
            return
        manager = next(bg for bg in self.running if bg.kind == "manager")
        before = max(self.running_nfs(manager.name), 0)
        self.start(command, kind="script")
        bg = self.running[-1]
        self.wait(bg, lambda: bg.proc.poll() is not None or self.running_nfs(manager.name) > before,
                  "NF running nor end of the examples")
        ended = [bg]
        if bg.proc.poll() is None:  # an NF: it ends with its manager
            self.onvm_stop(manager.name)
            ended.append(manager)
        for b in ended:
            try:
                b.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise ExampleFailed(f"`{b.line}` did not end after onvm stop:\n{b.output()}") from None
        if bg.proc.returncode != 0:
            raise ExampleFailed(f"README.md:{group[0].line}: the examples exited with "
                                f"{bg.proc.returncode}:\n{bg.output()}")

    @staticmethod
    def long_running(line: str) -> bool:
        words = shlex.split(line, comments=True)
        if words[-1] == "&":
            return True
        if words[0] != "onvm" or len(words) < 2:
            return False
        runs_a_file = len(words) > 2 and not words[2].startswith("-") and "--check" not in words
        return words[1] in ("manager", "nf", "top") or (words[1] == "run" and runs_a_file)

    def foreground(self, line: str, block: Block) -> None:
        r = subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise ExampleFailed(f"README.md:{block.line}: `{line}` exited with {r.returncode}:\n"
                                f"{r.stdout}{r.stderr}{self.background_output()}")

    def console(self, block: Block) -> None:
        lines = self.text(block.code).splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                raise ExampleFailed(f"README.md:{block.line + i}: a console command starts with '$ '")
            command, i = lines[i][2:], i + 1
            expected = []
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            r = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True,
                               text=True, timeout=120)
            got = (r.stdout + r.stderr).rstrip("\n").splitlines()
            if got != expected:
                raise ExampleFailed(f"README.md:{block.line}: `{command}` printed\n" + "\n".join(got)
                                    + "\ninstead of\n" + "\n".join(expected))

    def start(self, line: str, kind: str = "") -> None:
        words = shlex.split(line, comments=True)
        if words[-1] == "&":
            words = words[:-1]
            line = line[:line.rindex("&")]
        if not kind:
            kind = words[1] if words[0] == "onvm" and words[1] in ("manager", "nf", "run") else "other"
        name = _option(words, "--name", "onvm")
        before = max(self.running_nfs(name), 0) if kind == "nf" else 0  # before it can register
        log = self.tmp / f"bg{len(self.running)}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.cwd, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        bg = Background(line, proc, log, kind, name)
        self.running.append(bg)  # stopped at the end whatever happens next
        if kind == "run":
            from onvm.topology import load_topology

            topo = load_topology(str(self.cwd / words[2]))
            bg.name = topo.manager.name
            if topo.manager.exit_when_done or topo.manager.duration:  # it ends by itself: wait for it
                try:
                    rc = proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
                if rc != 0:
                    raise ExampleFailed(f"`{line}` exited with {rc}:\n{bg.output()}")
                return
            want = sum(n.instances for n in topo.nfs)
            self.wait(bg, lambda: self.running_nfs(bg.name) >= want, f"{want} NFs of {words[2]} running")
        elif kind == "manager":
            self.wait(bg, lambda: self.running_nfs(name) >= 0, f"manager {name} answering")
            web = _option(words, "--web", "")
            if web:  # the dashboard starts after the control socket (its token line is printed last)
                port, token = int(web.rpartition(":")[2]), self.runtime / f"onvm-{name}.web-token"
                self.wait(bg, lambda: token.exists() and _listening(port), f"web server on port {port}")
        elif kind == "nf":
            self.wait(bg, lambda: self.running_nfs(name) > before, f"the NF of `{line}` running")

    def onvm_stop(self, name: str) -> None:
        """``onvm stop``; what does not end in time is seen (and killed) by the waits after it."""
        try:
            subprocess.run([str(VENV_BIN / "onvm"), "stop", "--name", name], env=self.env,
                           capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass

    @staticmethod
    def running_nfs(name: str) -> int:
        """NFs running under manager ``name``; -1 while it does not answer."""
        try:
            with Client(name) as c:
                return sum(n["state"] == "running" for n in c.request("status")["nfs"])
        except OnvmError:
            return -1

    def wait(self, bg: Background, cond: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = bg.proc.poll() is not None  # before cond: a process that ends in between is seen
            if cond():
                return
            if ended:
                break
            time.sleep(0.05)
        raise ExampleFailed(f"`{bg.line}`: no {what} (exit status {bg.proc.poll()}):\n{bg.output()}")

    # ---- stopping --------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop what still runs, as the README says; returns what did not end cleanly."""
        problems = []
        for bg in reversed(self.running):  # last started first; an NF ends with its manager
            if bg.proc.poll() is None:
                if bg.kind == "run":
                    bg.proc.send_signal(signal.SIGINT)
                elif bg.kind == "manager":
                    self.onvm_stop(bg.name)
                elif bg.kind == "other":
                    bg.proc.terminate()
        for bg in reversed(self.running):
            try:
                bg.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(bg.proc.pid, signal.SIGKILL)
                bg.proc.wait()
                problems.append(f"`{bg.line}` did not stop within 60 s")
        for bg in self.running:
            ok = (0, -signal.SIGTERM) if bg.kind == "other" else (0,)
            if bg.proc.returncode not in ok:
                problems.append(f"`{bg.line}` exited with {bg.proc.returncode}:\n{bg.output()}")
        left = os.listdir(self.runtime)
        if left:
            problems.append(f"runtime files left behind: {left}")
        return problems

    def background_output(self) -> str:
        return "".join(f"\n--- `{bg.line}`:\n{bg.output()}" for bg in self.running)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _option(words: list[str], flag: str, default: str) -> str:
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(flag + "="):
            return w.split("=", 1)[1]
    return default


class ExampleFailed(AssertionError):
    """A README example did not do what the README says."""


class SkipSection(Exception):
    """The section needs what this machine lacks."""
