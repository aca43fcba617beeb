"""aes_decrypt: decrypts UDP payloads that aes_encrypt encrypted.

Expects:   UDP over IPv4 or IPv6 whose payload is a 16-byte nonce and AES-CTR ciphertext.
Modifies:  the payload becomes the plain text (16 bytes shorter); lengths and checksums follow.
Actions:   NEXT; DROP for a payload shorter than the nonce.
Options:   --key HEX (the key aes_encrypt used), --port N (only UDP to or from this port).
"""

from __future__ import annotations

import argparse

from onvm.nf import NF, from_args
from onvm.nfs._aes import NONCE, add_key_argument, cipher_kit, parse_key, replace_payload, udp_payload

SUMMARY = "decrypts UDP payloads encrypted by aes_encrypt"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_key_argument(p)


def make(args: argparse.Namespace) -> NF:
    Cipher, algorithms, modes = cipher_kit()
    algo = algorithms.AES(parse_key(args.key))
    port = args.port
    nf = from_args("aes_decrypt", args)

    @nf.packet
    def decrypt(pkt, meta):  # type: ignore[no-untyped-def]
        udp = udp_payload(pkt, port)
        if udp is None:
            return
        data = bytes(pkt.payload)
        if len(data) < NONCE:
            meta.drop()
            return
        dec = Cipher(algo, modes.CTR(data[:NONCE])).decryptor()
        replace_payload(pkt, udp, dec.update(data[NONCE:]) + dec.finalize())

    return nf
