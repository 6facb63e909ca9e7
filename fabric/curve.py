"""ZeroMQ CURVE security between the tiers: encryption, and authentication by allow-lists.

The fabric is secure by default: a tier refuses to bind or connect a non-loopback endpoint
without CURVE unless it is told ``--insecure-fabric`` (see ``check_endpoints``).

Keys are zmq certificate files: ``NAME.key`` (the public half, to hand out) and
``NAME.key_secret`` (mode 0600). A key directory has one fixed layout, written by
``python -m fabric.curve init DIR`` (idempotent: existing keys are kept):

| path                        | who reads it       | what                                 |
|-----------------------------|--------------------|--------------------------------------|
| ``broker.key_secret``       | broker             | the broker's key pair                |
| ``broker.key``              | frontends, workers | the broker's public key              |
| ``frontend.key_secret``     | frontends          | the frontends' key pair              |
| ``worker.key_secret``       | workers            | the workers' key pair                |
| ``allow/frontends/*.key``   | broker             | keys allowed on the frontend socket  |
| ``allow/workers/*.key``     | broker             | keys allowed on the worker socket    |

The broker is the CURVE server on both of its sockets, each with its own ZAP domain and its
own allow-list: a frontend key cannot announce models, a worker key cannot submit calls. An
empty (or missing) allow-list admits nobody.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

logger = logging.getLogger(__name__)

FRONTEND_DOMAIN = "frontends"
WORKER_DOMAIN = "workers"
ALLOW_DIR = "allow"
SECRET_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700


class FabricSetupError(ValueError):
    """The fabric's security settings cannot be used: say it in one line and exit."""


class InsecureFabric(FabricSetupError):
    """A non-loopback fabric endpoint without CURVE, and ``--insecure-fabric`` not given."""


def exit_on_setup_error(prog: str, exc: FabricSetupError) -> int:
    """The one-line message and exit status of a tier that cannot start its fabric."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


@dataclass(frozen=True)
class KeyLayout:
    """The paths of one key directory (see the module docstring)."""

    root: Path

    @property
    def broker_secret(self) -> Path:
        return self.root / "broker.key_secret"

    @property
    def broker_public(self) -> Path:
        return self.root / "broker.key"

    @property
    def frontend_secret(self) -> Path:
        return self.root / "frontend.key_secret"

    @property
    def worker_secret(self) -> Path:
        return self.root / "worker.key_secret"

    @property
    def allowed_frontends(self) -> Path:
        return self.root / ALLOW_DIR / FRONTEND_DOMAIN

    @property
    def allowed_workers(self) -> Path:
        return self.root / ALLOW_DIR / WORKER_DOMAIN


def init_keys(directory: str | Path) -> KeyLayout:
    """Create whatever key of the layout is missing in ``directory``; keep what exists.

    The frontend and worker public keys are copied into their allow-lists when first made.
    """
    keys = KeyLayout(Path(directory))
    for d in (keys.root, keys.allowed_frontends, keys.allowed_workers):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(KEY_DIR_MODE)
    for name, allow in (
        ("broker", None),
        ("frontend", keys.allowed_frontends),
        ("worker", keys.allowed_workers),
    ):
        secret = keys.root / f"{name}.key_secret"
        if not secret.exists():
            public_path, secret_path = zmq.auth.create_certificates(str(keys.root), name)
            Path(secret_path).chmod(SECRET_FILE_MODE)
            if allow is not None:
                (allow / f"{name}.key").write_bytes(Path(public_path).read_bytes())
            logger.info("fabric keys: wrote %s", secret_path)
        secret.chmod(SECRET_FILE_MODE)
    return keys


def _load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise FabricSetupError(f"cannot read CURVE key {path}: {exc}") from exc
    return public


def _load_secret(path: str | Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise FabricSetupError(f"cannot read CURVE key {path}: {exc}") from exc
    if secret is None:
        raise FabricSetupError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


@dataclass(frozen=True)
class _ServerSocketSecurity:
    public: bytes
    secret: bytes
    domain: str

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = self.domain.encode()


@dataclass(frozen=True)
class CurveServer:
    """The broker's side: its key pair and one allow-list directory per socket."""

    public: bytes
    secret: bytes
    frontends_dir: str
    workers_dir: str

    @classmethod
    def load(cls, secret_cert: str, frontends_dir: str, workers_dir: str) -> CurveServer:
        public, secret = _load_secret(secret_cert)
        return cls(public, secret, frontends_dir, workers_dir)

    @classmethod
    def from_keys(cls, directory: str | Path) -> CurveServer:
        keys = KeyLayout(Path(directory))
        return cls.load(
            str(keys.broker_secret), str(keys.allowed_frontends), str(keys.allowed_workers)
        )

    @property
    def for_frontends(self) -> _ServerSocketSecurity:
        return _ServerSocketSecurity(self.public, self.secret, FRONTEND_DOMAIN)

    @property
    def for_workers(self) -> _ServerSocketSecurity:
        return _ServerSocketSecurity(self.public, self.secret, WORKER_DOMAIN)

    def start_authenticator(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> ThreadAuthenticator:
        """Allow on each socket only the keys in its own directory; none when it is empty."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        for domain, location in (
            (FRONTEND_DOMAIN, self.frontends_dir),
            (WORKER_DOMAIN, self.workers_dir),
        ):
            allowed = len(list(Path(location).glob("*.key"))) if Path(location).is_dir() else 0
            if allowed:
                auth.configure_curve(domain=domain, location=location)
            logger.info("fabric: CURVE on, %d %s key(s) allowed", allowed, domain[:-1])
        return auth


@dataclass(frozen=True)
class CurveClient:
    """A frontend's or worker's side: the broker's public key and this process's key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_cert: str, client_secret_cert: str) -> CurveClient:
        server_public = _load_public(server_public_cert)
        public, secret = _load_secret(client_secret_cert)
        return cls(server_public, public, secret)

    @classmethod
    def from_keys(cls, directory: str | Path, tier: str) -> CurveClient:
        """``tier`` is "frontend" or "worker": which key pair of the directory to use."""
        keys = KeyLayout(Path(directory))
        own = {"frontend": keys.frontend_secret, "worker": keys.worker_secret}[tier]
        return cls.load(str(keys.broker_public), str(own))

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def broker_security(
    fabric_keys: str, secret_cert: str = "", frontends_dir: str = "", workers_dir: str = ""
) -> CurveServer | None:
    """The broker's CURVE from its settings: explicit files win over the key directory's."""
    if not (fabric_keys or secret_cert):
        return None
    keys = KeyLayout(Path(fabric_keys)) if fabric_keys else None
    return CurveServer.load(
        secret_cert or str(keys.broker_secret if keys else ""),
        frontends_dir or (str(keys.allowed_frontends) if keys else ""),
        workers_dir or (str(keys.allowed_workers) if keys else ""),
    )


def client_security(
    fabric_keys: str, server_key: str, client_cert: str, tier: str
) -> CurveClient | None:
    """A frontend's or worker's CURVE from its settings (``tier``: "frontend" or "worker")."""
    if not (fabric_keys or server_key):
        return None
    keys = KeyLayout(Path(fabric_keys)) if fabric_keys else None
    own = {"frontend": "frontend_secret", "worker": "worker_secret"}[tier]
    server = server_key or (str(keys.broker_public) if keys else "")
    cert = client_cert or (str(getattr(keys, own)) if keys else "")
    if not cert:
        raise FabricSetupError(
            f"CURVE needs this {tier}'s key pair: --curve-client-cert FILE.key_secret "
            "or --fabric-keys DIR"
        )
    return CurveClient.load(server, cert)


class ClientSettings(Protocol):
    @property
    def fabric_keys(self) -> str: ...
    @property
    def curve_server_key(self) -> str: ...
    @property
    def curve_client_cert(self) -> str: ...
    @property
    def insecure_fabric(self) -> bool: ...
    @property
    def brokers(self) -> tuple[str, ...]: ...


def fabric_security(config: ClientSettings, tier: str) -> CurveClient | None:
    """A frontend's or worker's CURVE from its config, after refusing a plain-text fabric
    off loopback (``check_endpoints``)."""
    curve = client_security(
        config.fabric_keys, config.curve_server_key, config.curve_client_cert, tier
    )
    check_endpoints(config.brokers, curve=curve is not None, insecure=config.insecure_fabric)
    return curve


def is_loopback(endpoint: str) -> bool:
    """``ipc://``, ``inproc://`` and TCP on a loopback address never leave this machine."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, "*", an interface name: may be reachable from outside
        return False


def check_endpoints(endpoints: Iterable[str], *, curve: bool, insecure: bool) -> None:
    """Refuse a plain-text fabric that other machines could reach, and say how CURVE stands.

    Raises ``InsecureFabric`` naming the first such endpoint unless ``insecure``.
    """
    if curve:
        return
    exposed = [e for e in endpoints if not is_loopback(e)]
    if not exposed:
        logger.info("fabric: CURVE off (loopback endpoints only)")
        return
    if not insecure:
        raise InsecureFabric(
            f"fabric endpoint {exposed[0]} is not loopback and CURVE is off: give --fabric-keys "
            "DIR (python -m fabric.curve init DIR writes one), or --insecure-fabric to run "
            "without authentication or encryption"
        )
    logger.warning("fabric: CURVE OFF on %s (--insecure-fabric): anyone who can reach "
                   "these endpoints can read and forge traffic", ", ".join(exposed))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="CURVE keys for the fabric. `init DIR` writes the standard key directory "
        "(idempotent); `DIR NAME` writes one key pair DIR/NAME.key and DIR/NAME.key_secret."
    )
    p.add_argument("directory", help="`init` or a directory")
    p.add_argument("name", nargs="?", help="key name (with a directory)")
    a = p.parse_args(argv)
    old_umask = os.umask(0o077)
    try:
        if a.directory == "init":
            if not a.name:
                p.error("init needs a directory: python -m fabric.curve init DIR")
            keys = init_keys(a.name)
            print(f"fabric keys in {keys.root}")
            return 0
        if not a.name:
            p.error("give a key name: python -m fabric.curve DIR NAME")
        Path(a.directory).mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(a.directory, a.name)
        Path(secret).chmod(SECRET_FILE_MODE)
        print(f"public: {public}\nsecret: {secret}")
        return 0
    finally:
        os.umask(old_umask)


if __name__ == "__main__":
    sys.exit(main())
