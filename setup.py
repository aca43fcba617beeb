"""Build of the native core (C11).  Everything else is in pyproject.toml."""
import glob
import os
import subprocess
from typing import Any

from setuptools import Extension, setup

SOURCES = ["module.c", "constants.c", "nfloop.c", "region.c", "parse.c", "route.c", "ports.c", "worker.c",
           "flowtable.c", "classify.c", "flowbind.c", "afpacket.c", "tap.c", "packet.c", "gather.c", "lpm.c",
           "latency.c", "retire.c", "mapguard.c", "fence.c", "capture.c", "trace.c"]
# Test and benchmark entry points: a second module, which the package never imports at run
# time; it calls the core through the function table onvm._native exports (onvm_capi.h).
HOOKS = ["hooks.c", "harness.c", "hookbench.c", "bpstress.c", "poolrace.c", "capture.c"]
extra = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type", "-fno-strict-aliasing",
         # Only a module's PyInit leaves it: calls between its files bind directly, not
         # through the PLT (the packet path makes some per packet).
         "-fvisibility=hidden"]
link = ["-lpthread"]
macros = []


def _afxdp() -> bool:
    """The afxdp port is built where libxdp's and libbpf's headers are (make deps installs
    libxdp-dev and libbpf-dev); ONVM_NO_AFXDP=1 builds without it."""
    if os.environ.get("ONVM_NO_AFXDP") == "1":
        return False
    dirs = ["/usr/include", "/usr/local/include"]
    return all(any(os.path.exists(os.path.join(d, h)) for d in dirs) for h in ("xdp/xsk.h", "bpf/libbpf.h"))


if _afxdp():
    SOURCES.append("afxdp.c")
    macros.append(("ONVM_HAVE_AFXDP", "1"))
    link += ["-lxdp", "-lbpf"]
# ONVM_SANITIZE=1 builds the core with AddressSanitizer and UBSan (make test-sanitize).
SANITIZE_LINK = ["-fsanitize=address,undefined"] if os.environ.get("ONVM_SANITIZE") else []
if SANITIZE_LINK:
    extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link += SANITIZE_LINK



def dpdk_extension() -> list[Extension]:
    """onvm._dpdk (the dpdk: port), built only where pkg-config finds DPDK (Debian: libdpdk-dev).

    It links DPDK; the core module does not, so NFs never load DPDK."""
    try:
        def pkg(*args: str) -> str:
            return subprocess.run(["pkg-config", *args, "libdpdk"], check=True, capture_output=True,
                                  text=True).stdout.strip()
        cflags, libs, libdir = pkg("--cflags").split(), pkg("--libs").split(), pkg("--variable=libdir")
    except (OSError, subprocess.CalledProcessError):
        return []
    # Debian's PMDs are plugins the EAL loads from here (-d), e.g. lib/x86_64-linux-gnu/dpdk/pmds-23.0.
    pmds = sorted(glob.glob(os.path.join(libdir, "dpdk", "pmds-*")))
    pmd_dir = pmds[-1] if pmds else ""
    # DPDK's headers as system headers: our warnings are for our code.
    flags = [f"-isystem{f[2:]}" if f.startswith("-I") else f for f in cflags]
    return [extension("onvm._dpdk", ["dpdkmod.c", "dpdk.c"], extra_compile_args=extra + flags,
                      extra_link_args=["-lpthread", *SANITIZE_LINK, *libs],
                      define_macros=[("ONVM_DPDK_PMD_DIR", f'"{pmd_dir}"')])]


def extension(name: str, sources: list[str], **options: Any) -> Extension:
    """A module of the core's sources: each is rebuilt when a header changes (they share the
    layout).  ``options`` replace the core's compile, link and macro arguments."""
    options = {"extra_compile_args": extra, "extra_link_args": link, "define_macros": macros, **options}
    return Extension(name, sources=[f"src/onvm/_native/{s}" for s in sources],
                     include_dirs=["src/onvm/_native"], depends=glob.glob("src/onvm/_native/*.h"), **options)


setup(ext_modules=[extension("onvm._native", SOURCES), extension("onvm._hooks", HOOKS), *dpdk_extension()])
