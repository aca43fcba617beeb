"""Text in the region's fixed fields is cut on a character boundary, never mid-character,
and instance numbers the service table cannot hold are refused."""

from __future__ import annotations

import os

import pytest

from onvm import _native
from onvm.constants import Action

try:
    from tests.native.test_pool import fresh_region, new_path
except ImportError:  # run from the sanitizer build's directory
    from test_pool import fresh_region, new_path  # type: ignore[no-redef]

WIDE = "é" * 40  # 80 bytes of UTF-8, two per character


def _cut(text: str, limit: int) -> str:
    """A pure-Python reference: the longest prefix of whole characters within ``limit`` bytes."""
    out = ""
    for ch in text:
        if len((out + ch).encode()) > limit:
            break
        out += ch
    return out


@pytest.mark.parametrize("text", [WIDE, "a" + WIDE, "ab" + "€" * 40, "x" + "😀" * 20, "plain ascii " * 10])
def test_nf_name_and_port_uri_are_cut_on_a_character_boundary(text):
    path = new_path()
    with fresh_region(path, pool_size=64) as r:
        r.nf_activate(1, 1, 0, os.getpid(), 0, text)
        r.set_port_info(0, 1, "pcap:/" + text * 2)
        r.set_chain(1, [(int(Action.TONF), 1)], text)
        assert r.nf_info(1)["name"] == _cut(text, 31)
        assert r.port_info(0)["uri"] == _cut("pcap:/" + text * 2, 111)
        assert next(name for cid, name, _ in r.chains() if cid == 1) == _cut(text, 23)


def test_an_instance_number_the_service_table_cannot_hold_is_refused():
    path = new_path()
    with fresh_region(path, pool_size=64) as r:
        with pytest.raises(ValueError, match="instance 65536 is out of range"):
            r.nf_activate(1, 1, _native.INSTANCE_MAX + 1, os.getpid(), 0, "x")
        with pytest.raises(ValueError, match="service 64"):
            r.nf_activate(1, _native.MAX_SERVICES, 0, os.getpid(), 0, "x")
        r.nf_activate(1, 1, _native.INSTANCE_MAX, os.getpid(), 0, "x")
        assert r.nf_info(1)["instance"] == _native.INSTANCE_MAX
