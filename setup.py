"""Build of the native core (C11).  Everything else is in pyproject.toml."""
import glob
import os
import subprocess

from setuptools import Extension, setup

SOURCES = ["module.c", "nfloop.c", "region.c", "parse.c", "route.c", "ports.c", "worker.c",
           "flowtable.c", "flowbind.c", "afpacket.c", "tap.c", "packet.c", "gather.c", "lpm.c", "harness.c",
           "latency.c", "retire.c"]
extra = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type", "-fno-strict-aliasing",
         # Only PyInit__native leaves the module: calls between its files bind directly, not
         # through the PLT (the packet path makes some per packet).
         "-fvisibility=hidden"]
link = ["-lpthread"]
# ONVM_SANITIZE=1 builds the core with AddressSanitizer and UBSan (make test-sanitize).
if os.environ.get("ONVM_SANITIZE"):
    extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link += ["-fsanitize=address,undefined"]



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
    return [
        Extension(
            "onvm._dpdk",
            sources=[f"src/onvm/_native/{s}" for s in ("dpdkmod.c", "dpdk.c")],
            include_dirs=["src/onvm/_native"],
            define_macros=[("ONVM_DPDK_PMD_DIR", f'"{pmd_dir}"')],
            extra_compile_args=extra + flags,
            extra_link_args=link + libs,
        )
    ]


setup(
    ext_modules=[
        Extension(
            "onvm._native",
            sources=[f"src/onvm/_native/{s}" for s in SOURCES],
            include_dirs=["src/onvm/_native"],
            extra_compile_args=extra,
            extra_link_args=link,
        )
    ]
    + dpdk_extension()
)
