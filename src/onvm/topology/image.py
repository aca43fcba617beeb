"""``onvm image build``: a container image for NFs, made from this host's own files.

No registry and no base image: the image's root file system holds only what an
NF needs, copied from the host at the same paths, so the command line that
starts an NF as a process starts it in the container unchanged:

- the Python interpreter (and the venv's ``pyvenv.cfg`` when running from one)
  and its standard library, without tests, IDLE, tkinter and the like;
- the installed packages the NF start path imports (onvm, numpy) and nothing
  else of site-packages;
- every shared library these need, found with ``ldd``, and the dynamic loader;
- ``/etc/passwd`` and ``/etc/group`` with root only, empty /tmp, /proc, /dev.

The tree is written as one tar stream straight into ``podman import`` (or
``docker import``), so nothing is left on disk.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

from onvm.errors import ConfigError
from onvm.topology.isolation import IMAGE, backend

_SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
                "unittest", "pydoc_data", "distutils", "config-3.11-x86_64-linux-gnu"}
_NF_IMPORTS = "import onvm.cli.main, onvm.nf._nf, onvm.nf._batch, onvm.nfs, " \
              "onvm.nfs.speed_tester, onvm.nfs.simple_forward, onvm.nfs.basic_monitor, onvm.nfs.bridge"


def _nf_packages() -> list[str]:
    """Directories of the non-stdlib packages the NF path imports (onvm, numpy and their .libs)."""
    code = (f"{_NF_IMPORTS}\nimport sys, os, sysconfig\n"
            "std = os.path.realpath(sysconfig.get_paths()['stdlib'])\n"
            "out = set()\n"
            "for m in list(sys.modules.values()):\n"
            "    f = getattr(m, '__file__', None)\n"
            "    if not f: continue\n"
            "    f = os.path.realpath(f)\n"
            "    if f.startswith(std + '/') and '/site-packages/' not in f: continue\n"
            "    top = m.__name__.split('.')[0]\n"
            "    top_mod = sys.modules.get(top)\n"
            "    tf = getattr(top_mod, '__file__', None)\n"
            "    if tf: out.add(os.path.dirname(os.path.realpath(tf)) if tf.endswith('__init__.py') else "
            "os.path.realpath(tf))\n"
            "print('\\n'.join(sorted(out)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise ConfigError(f"cannot list the packages NFs import: {r.stderr.strip()}")
    dirs = [d for d in r.stdout.split() if d]
    for d in list(dirs):
        libs = d + ".libs"  # wheels keep their bundled shared libraries beside the package
        if os.path.isdir(libs):
            dirs.append(libs)
        if os.path.basename(d) == "numpy":
            parent = os.path.dirname(d)
            for n in os.listdir(parent):
                if n.startswith("numpy") and n.endswith(".libs"):
                    dirs.append(os.path.join(parent, n))
    return sorted(set(dirs))


def _walk(top: str, skip_top: set[str] | None = None) -> list[str]:
    out: list[str] = []
    for root, dirs, files in os.walk(top):
        if skip_top and root == top:
            dirs[:] = [d for d in dirs if d not in skip_top]
        dirs[:] = [d for d in dirs if d not in ("tests", "test") or root == top]
        out.extend(os.path.join(root, f) for f in files)
    return out


_LDD_RE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _libraries(binaries: list[str]) -> set[str]:
    libs: set[str] = set()
    for i in range(0, len(binaries), 64):
        r = subprocess.run(["ldd", *binaries[i:i + 64]], capture_output=True, text=True, timeout=120)
        for line in r.stdout.splitlines():
            m = _LDD_RE.search(line)
            if m:
                libs.add(m.group(1))
    return libs


class _Tree:
    """Files to put in the image at their host paths; parent directories and symlinks kept."""

    def __init__(self) -> None:
        self.entries: dict[str, tarfile.TarInfo] = {}
        self.sources: dict[str, str] = {}

    def _dir(self, path: str) -> None:
        if path in ("/", "") or path in self.entries:
            return
        self._dir(os.path.dirname(path))
        if os.path.islink(path):
            self.link(path)
            return
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if real != path:  # under a symlinked directory: the entry belongs at the real path
            self._dir(real)
            return
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        self.entries[path] = ti

    def link(self, path: str) -> None:
        """A symlink as on the host, and what it points to."""
        if path in self.entries:
            return
        self._dir(os.path.dirname(path))
        target = os.readlink(path)
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        self.entries[path] = ti
        dest = os.path.normpath(os.path.join(os.path.dirname(path), target))
        self.add(dest)

    def add(self, path: str) -> None:
        path = os.path.abspath(path)
        if path in self.entries:
            return
        # Resolve directory symlinks in the parents (merged /usr): keep them as links.
        parent = os.path.dirname(path)
        self._dir(parent)
        real_parent = os.path.realpath(parent)
        if real_parent != parent:
            self.add(os.path.join(real_parent, os.path.basename(path)))
            return
        if os.path.islink(path):
            self.link(path)
        elif os.path.isdir(path):
            self._dir(path)
        elif os.path.isfile(path):
            st = os.stat(path)
            ti = tarfile.TarInfo(path.lstrip("/"))
            ti.size, ti.mode, ti.mtime = st.st_size, st.st_mode & 0o7777, int(st.st_mtime)
            self.entries[path] = ti
            self.sources[path] = path

    def text(self, path: str, content: str, mode: int = 0o644) -> None:
        self._dir(os.path.dirname(path))
        data = content.encode()
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.size, ti.mode, ti.mtime = len(data), mode, int(time.time())
        self.entries[path] = ti
        self.sources[path] = "\0" + content

    def write(self, out: io.BufferedIOBase | object) -> int:
        size = 0
        with tarfile.open(fileobj=out, mode="w|") as tar:  # type: ignore[call-overload]
            for path in sorted(self.entries, key=lambda p: (p.count("/"), p)):
                ti = self.entries[path]
                src = self.sources.get(path)
                if src is None:
                    tar.addfile(ti)
                elif src.startswith("\0"):
                    tar.addfile(ti, io.BytesIO(src[1:].encode()))
                else:
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)
                size += ti.size
        return size


def package_digest() -> str:
    """A digest of the onvm package's code: an image made from other code is stale."""
    import hashlib

    import onvm

    root = os.path.dirname(os.path.abspath(onvm.__file__))
    h = hashlib.sha256()
    for f in sorted(_walk(root)):
        if f.endswith((".py", ".so")):
            h.update(os.path.relpath(f, root).encode())
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:16]


def image_labels() -> dict[str, str]:
    """What an image must match to run this host's NFs: the interpreter and the package code."""
    return {"onvm.python": sys.executable, "onvm.package": package_digest()}


def assemble() -> _Tree:
    """The image's file tree."""
    import sysconfig

    tree = _Tree()
    exe = sys.executable
    tree.add(exe)
    real_exe = os.path.realpath(exe)
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if os.path.isfile(cfg):
        tree.add(cfg)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    files = _walk(stdlib, _SKIP_STDLIB)
    for pkg in _nf_packages():
        files += _walk(pkg) if os.path.isdir(pkg) else [pkg]
    for f in files:
        tree.add(f)
    binaries = [real_exe] + [f for f in files if f.endswith(".so") or ".so." in f]
    for lib in sorted(_libraries(binaries)):
        tree.add(lib)
    for d in ("/tmp", "/proc", "/dev", "/sys", "/dev/shm", "/run"):
        tree._dir(d)
    tree.text("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    tree.text("/etc/group", "root:x:0:\n")
    return tree


def build(runtime: str = "podman", tag: str = IMAGE, verbose: bool = True) -> dict[str, object]:
    """Build the NF image with ``runtime`` (podman or docker); returns what was built."""
    if runtime not in ("podman", "docker"):
        raise ConfigError(f"--runtime {runtime}: expected podman or docker")
    iso = backend(runtime)
    iso.check()
    t0 = time.monotonic()
    prog = [iso.program or runtime, *getattr(iso, "extra", ())]
    old = subprocess.run([*prog, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    tree = assemble()
    pythonpath = os.pathsep.join(sorted({os.path.dirname(p) for p in _nf_packages()}))
    cmd = [iso.program or runtime, *getattr(iso, "extra", ()), "import",
           "--change", f"ENV PYTHONPATH={pythonpath}", "--change", "WORKDIR /",
           "--change", "ENV PYTHONDONTWRITEBYTECODE=1"]
    for k, v in image_labels().items():
        cmd += ["--change", f"LABEL {k}={v}"]
    cmd += ["-", tag]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
        assert proc.stdin is not None
        try:
            size = tree.write(proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            size = 0
        proc.wait(timeout=600)
        log.seek(0)
        err = log.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise ConfigError(f"{runtime} import failed: {err}")
    if old:  # the image this one replaces: remove it unless a container still uses it
        subprocess.run([*prog, "rmi", old], capture_output=True, timeout=120)
    result = {"image": tag, "runtime": runtime, "files": len(tree.sources), "bytes": size,
              "seconds": round(time.monotonic() - t0, 2)}
    if verbose:
        print(f"built {tag} with {runtime}: {len(tree.sources)} files, {size >> 20} MiB, "
              f"in {result['seconds']} s", file=sys.stderr)
    return result
