"""PyTriton peer server: a TorchScript model behind a real Triton server, for ``bench.peers``.

Runs under ``bench/.venv-peers/bin/python`` (PyTriton, torch 2.13.0), never the project venv.
Serves ``--model-file`` (the very ``model.pt`` our worker serves) as ``--model`` with FP32
``INPUT0``/``OUTPUT0`` of ``--width`` values per row, Triton's dynamic batcher with the same
settings as our config.pbtxt (max batch 64, 500 µs queue delay), one torch thread. Every endpoint
binds 127.0.0.1 and metrics are off. The statistics endpoint stays token-protected; the token
is read from ``--token-file`` so the benchmark can send it as the ``triton-access-token`` header.

PyTriton's Triton stub links the system libpython: start this with ``LD_LIBRARY_PATH`` holding
the interpreter's LIBDIR (``bench.peers`` does).

    LD_LIBRARY_PATH=... bench/.venv-peers/bin/python bench/pytriton_server.py \
        --model-file DIR/mlp/1/model.pt --grpc-port 8101 --http-port 8100 --token-file T
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from peer_args import peer_parser  # this script's folder is on sys.path


def main() -> None:
    p = peer_parser(__doc__.splitlines()[0])
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--workspace", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np
    import torch
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    torch.set_num_threads(1)
    model = torch.jit.load(str(args.model_file), map_location="cpu").eval()

    @batch
    def infer(INPUT0: np.ndarray) -> dict[str, np.ndarray]:  # INPUT0: the tensor's name
        with torch.inference_mode():
            out = model(torch.from_numpy(INPUT0))
        return {"OUTPUT0": out.numpy()}

    token = args.token_file.read_text().strip()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        exit_on_error=True,
        log_verbose=0,
    )
    security = TritonSecurityConfig(access_token=token)
    with Triton(config=config, security_config=security, workspace=args.workspace) as triton:
        triton.bind(
            model_name=args.model,
            infer_func=infer,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(args.width,))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(args.width,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        print(f"pytriton serving {args.model} on 127.0.0.1:{args.grpc_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
