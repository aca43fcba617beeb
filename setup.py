"""Build of the native core (C11).  Everything else is in pyproject.toml."""
import os

from setuptools import Extension, setup

SOURCES = ["module.c", "nfloop.c", "region.c", "parse.c", "route.c", "ports.c", "worker.c",
           "flowtable.c", "flowbind.c", "afpacket.c", "tap.c", "packet.c", "gather.c", "lpm.c", "harness.c", "mapguard.c",
           "latency.c", "retire.c", "fence.c"]
extra = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type", "-fno-strict-aliasing",
         # Only PyInit__native leaves the module: calls between its files bind directly, not
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

setup(
    ext_modules=[
        Extension(
            "onvm._native",
            sources=[f"src/onvm/_native/{s}" for s in SOURCES],
            include_dirs=["src/onvm/_native"],
            extra_compile_args=extra,
            extra_link_args=link,
            define_macros=macros,
        )
    ]
)
