"""The environment variables pyonvm reads, all in one place.

=====================  ==================================================================
``ONVM_MANAGER``       the manager's name when no ``--name`` says it (default ``onvm``)
``ONVM_RUNTIME_DIR``   where sockets, tokens and regions live (default ``/dev/shm``)
``ONVM_REGION_DIR``    where the region file goes, instead of hugetlbfs or the runtime dir
``ONVM_SERVICE``,      an NF's service, instance and CPUs (``onvm run`` sets them for NF
``ONVM_INSTANCE``,     scripts it starts)
``ONVM_CPUS``
``ONVM_FORKSERVER``    ``0``: ``onvm run`` starts every NF as a new interpreter
=====================  ==================================================================

Only the standard library: NFs read this at start, where every import counts.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_MANAGER", "DEFAULT_RUNTIME_DIR", "forkserver", "manager_name", "nf_placement",
           "region_dir", "runtime_dir"]

DEFAULT_MANAGER = "onvm"
DEFAULT_RUNTIME_DIR = "/dev/shm"


def manager_name() -> str:
    """The manager's name: ``$ONVM_MANAGER``, else ``onvm``."""
    return os.environ.get("ONVM_MANAGER") or DEFAULT_MANAGER


def runtime_dir() -> str:
    """The directory holding sockets and regions: ``$ONVM_RUNTIME_DIR``, else /dev/shm."""
    return os.environ.get("ONVM_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR


def region_dir() -> str | None:
    """``$ONVM_REGION_DIR`` when set: the directory region files go to."""
    return os.environ.get("ONVM_REGION_DIR") or None


def nf_placement() -> tuple[int | None, int | None, str | None]:
    """(service, instance, CPU list text) an NF was started with, each None when not set."""
    env = os.environ
    service = env.get("ONVM_SERVICE", "")
    instance = env.get("ONVM_INSTANCE", "")
    return (int(service) if service.isdecimal() else None, int(instance) if instance.isdecimal() else None,
            env.get("ONVM_CPUS") or None)


def forkserver() -> bool:
    """Whether ``onvm run`` forks process-isolated NFs from a warm parent (``ONVM_FORKSERVER=0``: no)."""
    return os.environ.get("ONVM_FORKSERVER", "1") != "0"
