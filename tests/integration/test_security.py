"""TLS / mTLS on the gRPC port and CURVE between the tiers, with real processes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fabric.curve import init_keys

from .stack import HEARTBEAT_INTERVAL_S, PYTHON, REPO_ROOT, Stack, free_port, wait_for

pytestmark = pytest.mark.timeout(180)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca_and_cert(d: Path, name: str, ca: str = "ca") -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
             "-out", str(d / f"{name}.csr"), "-subj", "/CN=localhost")  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"),
             "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-days", "1",
             "-out", str(d / f"{name}.pem"), "-extfile", str(ext))  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-subj", "/CN=test-ca")  # fmt: skip
    _make_ca_and_cert(d, "server")
    _make_ca_and_cert(d, "client")
    return d


def _simple_inputs() -> tuple[list[grpcclient.InferInput], np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs, a


def _start(stack: Stack, frontend_args: list[str], broker_args: list[str] = (),
           worker_args: list[str] = ()) -> int:  # fmt: skip
    stack._spawn("broker", ["-m", "broker", "--frontend-bind", stack.broker_frontend_addr,
                            "--worker-bind", stack.broker_worker_addr,
                            "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                            *broker_args])  # fmt: skip
    stack.start_worker(extra_args=list(worker_args))
    port = free_port()
    stack._spawn("frontend", ["-m", "frontend", "--host", "127.0.0.1", "--port", str(port),
                              "--broker", stack.broker_frontend_addr,
                              "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                              *frontend_args], port)  # fmt: skip
    return port


def _ssl_client(port: int, pki: Path, with_cert: bool) -> grpcclient.InferenceServerClient:
    kwargs = {}
    if with_cert:
        kwargs = {"private_key": str(pki / "client.key"),
                  "certificate_chain": str(pki / "client.pem")}  # fmt: skip
    return grpcclient.InferenceServerClient(
        f"localhost:{port}", ssl=True, root_certificates=str(pki / "ca.pem"), **kwargs
    )


def test_mtls_serves_clients_with_a_certificate_and_refuses_others(
    make_stack: Callable[[], Stack], pki: Path
) -> None:
    stack = make_stack()
    port = _start(stack, ["--tls-cert-file", str(pki / "server.pem"),
                          "--tls-key-file", str(pki / "server.key"),
                          "--tls-client-ca-file", str(pki / "ca.pem")])  # fmt: skip
    good = _ssl_client(port, pki, with_cert=True)
    wait_for(lambda: good.is_model_ready("simple"), timeout_s=60, what="model ready over mTLS",
             watch=stack.procs)  # fmt: skip
    inputs, a = _simple_inputs()
    np.testing.assert_array_equal(good.infer("simple", inputs).as_numpy("OUTPUT0"), a + a)

    no_cert = _ssl_client(port, pki, with_cert=False)
    with pytest.raises(InferenceServerException):
        no_cert.is_server_live(client_timeout=5)
    plaintext = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    with pytest.raises(InferenceServerException):
        plaintext.is_server_live(client_timeout=5)
    assert good.is_server_live()


def test_curve_encrypts_and_allow_lists_the_tiers(
    make_stack: Callable[[], Stack], tmp_path: Path
) -> None:
    keys = init_keys(tmp_path / "keys").root
    subprocess.run([PYTHON, "-m", "fabric.curve", str(keys), "stranger"], check=True,
                   cwd=REPO_ROOT, capture_output=True)  # fmt: skip
    stack = make_stack()
    curve = ["--fabric-keys", str(keys)]
    port = _start(stack, curve, curve, curve)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    wait_for(lambda: client.is_model_ready("simple"), timeout_s=60,
             what="model ready over CURVE", watch=stack.procs)  # fmt: skip
    inputs, a = _simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT1"), a - a)

    # A frontend whose key is not allow-listed never reaches the broker.
    port2 = free_port()
    stack._spawn("frontend", ["-m", "frontend", "--host", "127.0.0.1", "--port", str(port2),
                              "--broker", stack.broker_frontend_addr,
                              "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
                              "--curve-server-key", str(keys / "broker.key"),
                              "--curve-client-cert", str(keys / "stranger.key_secret")],
                 port2)  # fmt: skip
    stranger = grpcclient.InferenceServerClient(f"127.0.0.1:{port2}")
    wait_for(lambda: stranger.is_server_live(client_timeout=1), timeout_s=30,
             what="stranger frontend live", watch=stack.procs)  # fmt: skip
    with pytest.raises(InferenceServerException) as info:
        stranger.infer("simple", inputs, client_timeout=10)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert not stranger.is_server_ready()
