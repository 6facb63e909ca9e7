"""Read the security mechanism a ZeroMQ port offers, from its ZMTP 3 greeting (no handshake)."""

from __future__ import annotations

import socket

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
GREETING_BYTES = 64
MECHANISM = slice(12, 32)


def greeting_mechanism(host: str, port: int, timeout_s: float = 5.0) -> str:
    """ "CURVE", "NULL" or "PLAIN": what the peer listening on ``host:port`` says it speaks."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        # Signature and major version only: the peer then sends the rest of its greeting
        # and waits for ours, which never comes (a full NULL greeting to a CURVE port makes
        # it hang up before its own greeting is out).
        sock.sendall(SIGNATURE + b"\x03")
        theirs = b""
        while len(theirs) < GREETING_BYTES:
            chunk = sock.recv(GREETING_BYTES - len(theirs))
            if not chunk:
                break
            theirs += chunk
    if len(theirs) < GREETING_BYTES or theirs[:1] != b"\xff" or theirs[9:10] != b"\x7f":
        raise AssertionError(f"no ZMTP 3 greeting from {host}:{port}: {theirs!r}")
    return theirs[MECHANISM].rstrip(b"\x00").decode()
