"""A capture as a client sees it: the pcap stream of a ``capture_start`` and how it ends.

The manager sends a capture's packets as ``capture`` events of pcap records on
the connection that started it, then one ``capture_end`` event with its counts
(``manager/captures.py``).  :func:`stream` turns that into bytes of a pcap file
(nanosecond stamps): the CLI writes them as they come (``onvm capture``), the
web endpoint collects a bounded capture for download (:func:`collect`).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from typing import Any

from onvm.control import ops
from onvm.control.client import Client
from onvm.errors import OnvmError

__all__ = ["PCAP_NS_MAGIC", "collect", "pcap_header", "stream"]

PCAP_NS_MAGIC = 0xA1B23C4D  # classic pcap with nanosecond stamps


def pcap_header(snaplen: int) -> bytes:
    """A pcap file header: nanosecond stamps, Ethernet."""
    return struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, snaplen, 1)


def stream(client: Client, cid: int, deadline: float | None = None) -> Iterator[bytes | dict[str, Any]]:
    """Capture ``cid``'s records (bytes) as they come, then its end (a dict of its counts); stops
    early, without an end, when the manager closes the connection or at ``deadline`` (monotonic)."""
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return
        ev = client.next_event(wait)
        if ev is None:
            return
        if ev.name == "capture" and ev.data.get("id") == cid:
            yield base64.b64decode(ev.data["data"])
        elif ev.name == "capture_end" and ev.data.get("id") == cid:
            yield ev.data
            return


def collect(name: str, op: ops.CaptureStart, seconds: float, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """A capture of at most ``seconds`` and about ``max_bytes`` as one pcap file, and its counts
    (captured, dropped by the capture)."""
    with Client(name) as client:
        started = client.call(op)
        cid = started["id"]
        out, size, end = [pcap_header(started["snaplen"])], 0, None
        for item in stream(client, cid, time.monotonic() + seconds):
            if isinstance(item, dict):
                end = item
                break
            out.append(item)
            size += len(item)
            if size >= max_bytes:
                break
        if end is None:  # time or room ran out first
            try:
                end = client.call(ops.CaptureStop(cid))
            except OnvmError as e:
                if e.code != "not_found":
                    raise
                # It ended by itself meanwhile: its end event is on the way.
            for item in stream(client, cid, time.monotonic() + 0.5):  # copied before it stopped
                if isinstance(item, dict):
                    end = item
                elif size < max_bytes:
                    out.append(item)
                    size += len(item)
        end = end or {}
        return b"".join(out), {"captured": end.get("captured", 0), "dropped": end.get("dropped", 0)}
