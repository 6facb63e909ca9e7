"""Is a TCP port free to listen on? Checked before starting, so a taken port is one line."""

from __future__ import annotations

import socket


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port``. SO_REUSEADDR as the servers set it, so a
    port left in TIME_WAIT by a previous run counts as free, as it is for them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
