"""aes_encrypt: encrypts the payload of UDP packets with AES-CTR (see aes_decrypt).

Expects:   UDP over IPv4 or IPv6 (other packets pass untouched).
Modifies:  the UDP payload becomes a 16-byte random nonce and the ciphertext
           (16 bytes longer); the UDP length, IP length and checksums follow.
Actions:   NEXT; DROP when the longer packet does not fit its slot.
Options:   --key HEX (16, 24 or 32 bytes), --port N (only UDP to or from this port).
"""

from __future__ import annotations

import argparse
import os

from onvm.nf import NF, from_args
from onvm.nfs._aes import NONCE, add_key_argument, cipher_kit, parse_key, replace_payload, udp_payload

SUMMARY = "encrypts UDP payloads with AES-CTR (a nonce per packet)"
SERVICE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_key_argument(p)


def make(args: argparse.Namespace) -> NF:
    Cipher, algorithms, modes = cipher_kit()
    algo = algorithms.AES(parse_key(args.key))
    port = args.port
    nf = from_args("aes_encrypt", args)

    @nf.packet
    def encrypt(pkt, meta):  # type: ignore[no-untyped-def]
        udp = udp_payload(pkt, port)
        if udp is None:
            return
        nonce = os.urandom(NONCE)
        enc = Cipher(algo, modes.CTR(nonce)).encryptor()
        if not replace_payload(pkt, udp, nonce + enc.update(bytes(pkt.payload)) + enc.finalize()):
            meta.drop()

    return nf
