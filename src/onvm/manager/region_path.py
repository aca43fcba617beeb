"""Where the shared region goes: hugetlbfs when one is mounted with free pages, else tmpfs."""

from __future__ import annotations

import os

from onvm import env
from onvm.paths import runtime_dir, validate_name


def _hugetlbfs_mounts() -> list[str]:
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            return [line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"]]
    except OSError:
        return []


def _free_huge_pages() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def region_dir() -> str:
    """The directory for region files (``$ONVM_REGION_DIR`` overrides the choice)."""
    forced = env.region_dir()
    if forced:
        return forced
    if _free_huge_pages() > 0:
        for mount in _hugetlbfs_mounts():
            if os.access(mount, os.W_OK):
                return mount
    return runtime_dir()


def region_path(name: str) -> str:
    """The region file of manager ``name``."""
    return os.path.join(region_dir(), f"onvm-{validate_name(name)}.region")
