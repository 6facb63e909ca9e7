"""Optional ZeroMQ CURVE security between the tiers: encryption, and with an allow-list of
client keys on the broker, authentication.

Keys are zmq certificate files (``python -m fabric.curve DIR NAME`` writes ``NAME.key``, the
public half to hand out, and ``NAME.key_secret``). The broker is the CURVE server on both of
its sockets; frontends and workers are clients that must know the broker's public key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveServer:
    """The broker's side: its own key pair, and optionally the directory of allowed clients."""

    public: bytes
    secret: bytes
    clients_dir: str = ""

    @classmethod
    def load(cls, secret_cert: str, clients_dir: str = "") -> CurveServer:
        public, secret = zmq.auth.load_certificate(secret_cert)
        if secret is None:
            raise ValueError(f"{secret_cert} holds no secret key (use the .key_secret file)")
        return cls(public, secret, clients_dir)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def start_authenticator(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> ThreadAuthenticator:
        """Allow only the client keys in ``clients_dir`` (any client when it is empty)."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        if self.clients_dir:
            auth.configure_curve(domain="*", location=self.clients_dir)
        else:
            auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        return auth


@dataclass(frozen=True)
class CurveClient:
    """A frontend's or worker's side: the broker's public key and this process's key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_cert: str, client_secret_cert: str = "") -> CurveClient:
        server_public, _ = zmq.auth.load_certificate(server_public_cert)
        if client_secret_cert:
            public, secret = zmq.auth.load_certificate(client_secret_cert)
            if secret is None:
                raise ValueError(f"{client_secret_cert} holds no secret key")
        else:  # encryption only: the broker must allow any client
            public, secret = zmq.curve_keypair()
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a CURVE key pair: DIR/NAME.key, .key_secret")
    p.add_argument("directory")
    p.add_argument("name")
    a = p.parse_args(argv)
    Path(a.directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(a.directory, a.name)
    print(f"public: {public}\nsecret: {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
