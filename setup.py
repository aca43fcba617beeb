"""Build of the native core (C11).  Everything else is in pyproject.toml."""
import glob
import os

from setuptools import Extension, setup

SOURCES = ["module.c", "constants.c", "nfloop.c", "region.c", "parse.c", "route.c", "ports.c", "worker.c",
           "flowtable.c", "flowbind.c", "afpacket.c", "tap.c", "packet.c", "gather.c", "lpm.c", "latency.c",
           "retire.c"]
# Test and benchmark entry points: a second module, which the package never imports at run
# time; it calls the core through the function table onvm._native exports (onvm_core_api.h).
HOOKS = ["hooks.c", "harness.c", "hookbench.c"]
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
if os.environ.get("ONVM_SANITIZE"):
    extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link += ["-fsanitize=address,undefined"]


def extension(name: str, sources: list[str]) -> Extension:
    return Extension(name, sources=[f"src/onvm/_native/{s}" for s in sources], include_dirs=["src/onvm/_native"],
                     depends=glob.glob("src/onvm/_native/*.h"), extra_compile_args=extra, extra_link_args=link,
                     define_macros=macros)


setup(ext_modules=[extension("onvm._native", SOURCES), extension("onvm._hooks", HOOKS)])
