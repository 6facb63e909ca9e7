"""Start one broker, one frontend and N workers on this machine, with prefixed logs.

Ctrl-C or SIGTERM stops every process cleanly: SIGTERM to each (frontend first, then
workers, then the broker), SIGKILL after a grace period. A second Ctrl-C kills at once.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from typing import IO

GRACE_S = 15.0


def _pump(name: str, stream: IO[str]) -> None:
    for line in stream:
        sys.stdout.write(f"{name:<9}| {line}")
        sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--models", default="models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--broker-frontend-port", type=int, default=5555)
    p.add_argument("--broker-worker-port", type=int, default=5556)
    a = p.parse_args()
    fe_ep = f"tcp://127.0.0.1:{a.broker_frontend_port}"
    wk_ep = f"tcp://127.0.0.1:{a.broker_worker_port}"
    py = sys.executable
    commands = [
        ("broker", [py, "-m", "broker", "--frontend-bind", fe_ep, "--worker-bind", wk_ep]),
        *[
            (f"worker-{i}", [py, "-m", "worker", "--broker", wk_ep, "--model-repository", a.models])
            for i in range(a.workers)
        ],
        (
            "frontend",
            [py, "-m", "frontend", "--host", a.host, "--port", str(a.port), "--broker", fe_ep],
        ),
    ]
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:
            for _, proc in procs:
                proc.kill()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name, cmd in commands:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
            )
            procs.append((name, proc))
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
        print(f"serving on {a.host}:{a.port} (gRPC, KServe v2); Ctrl-C stops", flush=True)
        while not stop.is_set():
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"[run] {name} exited with {proc.returncode}; stopping", flush=True)
                    stop.set()
            stop.wait(0.5)
    finally:
        order = (
            [p for p in procs if p[0] == "frontend"]
            + [p for p in procs if p[0].startswith("worker")]
            + [p for p in procs if p[0] == "broker"]
        )
        for name, proc in order:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    print(f"[shutdown] run: {name} did not stop; killing", flush=True)
                    proc.kill()
                    proc.wait()
        for s, h in previous.items():
            signal.signal(s, h)
        print("[shutdown] run: all stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
