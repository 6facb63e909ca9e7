"""The command-line options both peer server scripts take (``bench/pytriton_server.py``,
``bench/ray_server.py``). They run as scripts under the peers venv, where this file is
importable as ``peer_args`` because it sits next to them."""

from __future__ import annotations

import argparse
from pathlib import Path


def peer_parser(description: str) -> argparse.ArgumentParser:
    """Model file and name, row width, ports and the batching settings of our config.pbtxt."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-file", required=True, type=Path)
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    return p
