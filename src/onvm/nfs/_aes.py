"""What aes_encrypt and aes_decrypt share: the key option and resizing a UDP payload in place.

The encrypted payload is a 16-byte random nonce followed by the AES-CTR
ciphertext of the plain payload, so it is 16 bytes longer; lengths and
checksums are fixed after the payload changed size.
"""

from __future__ import annotations

import argparse
from typing import Any

from onvm.errors import ConfigError

NONCE = 16


def add_key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="AES key in hex: 16, 24 or 32 bytes")
    p.add_argument("--port", type=int, default=None, help="only UDP packets to or from this port")


def cipher_kit() -> tuple[Any, Any, Any]:
    """cryptography's (Cipher, algorithms, modes), or a clear error when it is missing."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        raise ConfigError("this NF needs the cryptography package: pip install 'pyonvm[nfs]'") from None
    return Cipher, algorithms, modes


def parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) not in (16, 24, 32):
        raise ConfigError("--key must be 32, 48 or 64 hex digits (an AES-128/192/256 key)")
    return key


def udp_payload(pkt: Any, port: int | None) -> Any:
    """The UDP header of a packet this NF works on, or None."""
    udp = pkt.udp
    if udp is None or (port is not None and port not in (udp.src_port, udp.dst_port)):
        return None
    return udp


def replace_payload(pkt: Any, udp: Any, new: bytes) -> bool:
    """Put ``new`` where the payload was, fixing lengths and checksums; False if it cannot fit."""
    off = pkt.payload_offset
    old = len(pkt.payload)
    try:
        pkt.len = off + len(new)  # trailing frame padding goes
    except ValueError:
        return False
    pkt.data[off:off + len(new)] = new
    delta = len(new) - old
    udp.length = udp.length + delta
    ip = pkt.ipv4
    if ip is not None:
        ip.total_length = ip.total_length + delta
    else:
        pkt.ipv6.payload_length = pkt.ipv6.payload_length + delta
    pkt.update_checksums()
    return True
