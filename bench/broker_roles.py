"""The fake peers of ``bench.broker_bench``, each run as a subprocess of that module
(``python -m bench.broker_bench --role worker|frontend``), written directly against
``fabric/protocol.py``:

- fake workers announce ``mlp`` (its real config.pbtxt) with a capacity in READY, answer every
  REQUEST with REPLY ``[header, frontend identity, ModelInferResponse]`` and heartbeat;
- fake frontends keep a window of requests (a real ~1 KiB ModelInferRequest each) outstanding per
  socket and send a new one for every reply.

The broker under test is started here too (``start_broker``), with readers of its metrics.
Each fake peer prints one JSON line with what it counted when it ends; ``role_result`` reads it
back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.lifecycle import Proc, StackError, free_port
from bench.report import REPO_ROOT

MODEL = "mlp"
WIDTH = 256
TCP = "tcp://127.0.0.1:{}"


# --------------------------------------------------------------------------- payloads
def request_payload() -> bytes:
    """A serialized ModelInferRequest for mlp: FP32 [1, 256] raw input (about 1 KiB)."""
    import numpy as np
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=MODEL)
    inp = req.inputs.add()
    inp.name = "INPUT0"
    inp.datatype = "FP32"
    inp.shape.extend([1, WIDTH])
    req.raw_input_contents.append(
        np.random.default_rng(0).standard_normal((1, WIDTH)).astype(np.float32).tobytes()
    )
    return req.SerializeToString()


def model_config_bytes() -> bytes:
    """``models/mlp/config.pbtxt`` as the serialized ModelConfig a worker announces."""
    from google.protobuf import text_format

    # tritonclient's copy of model_config.proto: the same wire format as protos/, and it can
    # live in one process with tritonclient's service_pb2 (ours cannot: duplicate symbols).
    from tritonclient.grpc import model_config_pb2 as mc

    text = (REPO_ROOT / "models" / MODEL / "config.pbtxt").read_text()
    return text_format.Parse(text, mc.ModelConfig()).SerializeToString(deterministic=True)


# --------------------------------------------------------------------------- fake peers
def messages(frames: list[bytes]) -> list[list[bytes]]:
    """Frames after the tag of every message in one received ZeroMQ message (BATCH unpacked)."""
    from fabric.protocol import TYPE_FRAME, MsgType, unpack_batch

    if frames[1] == TYPE_FRAME[MsgType.BATCH]:
        return unpack_batch(frames[2])
    return [frames[1:]]


def fake_worker(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from bench.bare_server import fixed_response
    from fabric.protocol import (
        PROTOCOL_TAG,
        TYPE_FRAME,
        HeartbeatHeader,
        ModelAnnouncement,
        MsgType,
        ReadyHeader,
        ReplyHeader,
        RequestHeader,
        coalesce,
        decode_header,
        encode,
        encode_header,
    )
    from fabric.sockets import make_socket

    ctx: zmq.Context = zmq.Context()
    socks = []
    ready = encode(
        MsgType.READY,
        ReadyHeader([ModelAnnouncement(MODEL, "1", model_config_bytes(), args.capacity)]),
    )
    heartbeat = encode(MsgType.HEARTBEAT, HeartbeatHeader())
    for i in range(args.n):
        s = make_socket(ctx, zmq.DEALER, identity=f"fake-worker-{os.getpid()}-{i}".encode())
        s.connect(args.endpoint)
        s.send_multipart(ready)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    response = fixed_response(MODEL, WIDTH)
    t_req, t_reply, t_hb, t_dis = (
        TYPE_FRAME[MsgType.REQUEST],
        TYPE_FRAME[MsgType.REPLY],
        TYPE_FRAME[MsgType.HEARTBEAT],
        TYPE_FRAME[MsgType.REANNOUNCE],  # the broker does not know this worker
    )
    ok_headers: dict[int, bytes] = {}
    stop = stop_flag()
    requests = replies = 0
    next_hb = time.monotonic() + 0.5
    while not stop:
        now = time.monotonic()
        if now >= next_hb:
            for s in socks:
                s.send_multipart(heartbeat, zmq.NOBLOCK)
            next_hb = now + 0.5
        for s, _ in poller.poll(100):
            out: list[list[bytes]] = []
            for _ in range(1000):
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for m in messages(frames):
                    kind = m[0]
                    if kind == t_req:
                        requests += 1
                        if args.no_reply:
                            continue
                        req = decode_header(MsgType.REQUEST, m[1])
                        if not isinstance(req, RequestHeader):
                            continue
                        rid = req.request_id
                        head = ok_headers.get(rid)
                        if head is None:
                            head = encode_header(ReplyHeader(rid, "OK"))
                        out.append([PROTOCOL_TAG, t_reply, head, m[2], response])
                    elif kind == t_dis:
                        s.send_multipart(ready)
                    elif kind != t_hb:
                        pass
            if not out:
                continue
            replies += len(out)
            if args.coalesce:
                for i in range(0, len(out), args.chunk):
                    s.send_multipart(coalesce(out[i : i + args.chunk]))
            else:
                for m in out:
                    s.send_multipart(m)
    for s in socks:
        s.close(linger=0)
    ctx.term()
    return {"requests": requests, "replies": replies}


def fake_frontend(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    from fabric.protocol import (
        PROTOCOL_TAG,
        TYPE_FRAME,
        MsgType,
        ReplyHeader,
        RequestHeader,
        coalesce,
        decode_header,
        encode_header,
    )
    from fabric.sockets import make_socket

    ctx: zmq.Context = zmq.Context()
    payload = request_payload()
    t_req, t_reply = TYPE_FRAME[MsgType.REQUEST], TYPE_FRAME[MsgType.REPLY]
    socks = []
    next_id = [1] * args.n
    for i in range(args.n):
        s = make_socket(ctx, zmq.DEALER, identity=f"fake-frontend-{os.getpid()}-{i}".encode())
        s.connect(args.endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)

    def send(i: int, count: int) -> None:
        s = socks[i]
        msgs = []
        for _ in range(count):
            rid = next_id[i]
            next_id[i] += 1
            head = encode_header(RequestHeader(rid, MODEL, "", 0))
            msgs.append([PROTOCOL_TAG, t_req, head, payload])
        if args.coalesce:
            for k in range(0, len(msgs), args.chunk):
                s.send_multipart(coalesce(msgs[k : k + args.chunk]))
        else:
            for m in msgs:
                s.send_multipart(m)

    sleep_until(args.start_at - args.warmup)
    for i in range(args.n):
        send(i, args.window)
    t_start, t_end = args.start_at, args.start_at + args.duration
    in_window = errors = total = 0
    sample: str = ""
    index = {s: i for i, s in enumerate(socks)}
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        for s, _ in poller.poll(50):
            got = 0
            for _ in range(1000):
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for m in messages(frames):
                    if m[0] != t_reply:
                        continue
                    got += 1
                    header = decode_header(MsgType.REPLY, m[1])
                    assert isinstance(header, ReplyHeader)
                    if header.status != "OK":
                        errors += 1
                        sample = sample or f"{header.status}: {header.message}"
            if got:
                total += got
                now = time.monotonic()
                if t_start <= now < t_end:
                    in_window += got
                send(index[s], got)
    for s in socks:
        s.close(linger=0)
    ctx.term()
    return {"replies_in_window": in_window, "replies": total, "errors": errors, "sample": sample}


def stop_flag() -> list[int]:
    """A list that becomes truthy on SIGTERM/SIGINT."""
    flag: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: flag.append(1))
    return flag


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def role(argv: list[str], log_dir: Path, name: str) -> Proc:
    """Start a fake peer (``argv``: its --role and options) with its log in ``log_dir``."""
    return Proc(name, [sys.executable, "-m", "bench.broker_bench", *argv], log_dir)


def role_result(p: Proc, timeout: float = 30.0) -> dict[str, Any]:
    """The JSON line a fake peer printed as it ended (an error where it did not)."""
    try:
        p.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.stop()
        return {"error": f"{p.name} did not finish"}
    for line in reversed(p.log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    return {"error": f"{p.name} exited {p.popen.returncode}:\n{p.log_tail()}"}


def start_broker(
    log_dir: Path, name: str, extra: list[str] | None = None
) -> tuple[Proc, str, str, int]:
    """A broker on free ports with its metrics endpoint up; (proc, frontend endpoint, worker
    endpoint, metrics port)."""
    pf, pw, pm = free_port(), free_port(), free_port()
    proc = Proc(
        name,
        [
            sys.executable,
            "-m",
            "broker",
            "--frontend-bind",
            TCP.format(pf),
            "--worker-bind",
            TCP.format(pw),
            "--metrics-port",
            str(pm),
            *(extra or []),
        ],
        log_dir,
    )
    _wait_metrics(pm, proc)
    return proc, TCP.format(pf), TCP.format(pw), pm


def metrics(port: int) -> dict[str, float]:
    """The Prometheus text of the broker at ``port``, as name{labels} -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def _wait_metrics(port: int, proc: Proc, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise StackError(f"broker exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            metrics(port)
            return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"broker metrics not up after {timeout:.0f} s:\n{proc.log_tail()}")


def wait_gauge(port: int, key: str, want: float, timeout: float) -> float | None:
    """Poll until metric ``key`` reaches ``want``; its last value (None if never read)."""
    t0 = time.monotonic()
    value = None
    while time.monotonic() - t0 < timeout:
        try:
            value = metrics(port).get(key)
        except OSError:
            value = None
        if value is not None and value >= want:
            return value
        time.sleep(0.2)
    return value
