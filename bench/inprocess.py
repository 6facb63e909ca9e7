"""In-process baseline: a TorchScript model called directly, one torch thread, no serving.

Loads ``<repo>/<model>/<highest version>/model.pt`` (or ``--model-file``), then for each batch
size (default 1, 2, 4, 8, 16, 32, 64) times ``model(x)`` under ``torch.inference_mode()`` with
FP32 [batch, width] fixed-seed inputs (width from the model's config.pbtxt, else 256), one call
at a time, round-robin over the batch sizes, and reports the median µs per call (the mean beside
it), rows/s and µs per row. This is what the model alone costs; the serving stack's throughput is
judged against it (and against the bare gRPC server), and the worker's compute time per batch
size is compared with it at the same batch sizes.

    python -m bench.inprocess (--model-repository DIR | --model-file F | --reference)
        [--model mlp] [--width N] [--batch-sizes 1,2,4] [--seconds 0.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
WIDTH = 256


def find_model_file(repo: Path, model: str = "mlp") -> Path:
    """The model.pt of the highest numeric version of ``model`` in a Triton-layout repository."""
    versions = sorted(
        (int(p.name), p) for p in (repo / model).iterdir() if p.is_dir() and p.name.isdigit()
    )
    for _, vdir in reversed(versions):
        if (vdir / "model.pt").is_file():
            return vdir / "model.pt"
    raise FileNotFoundError(f"no {model}/<version>/model.pt under {repo}")


def config_width(model_file: Path, default: int = WIDTH) -> int:
    """Values per row of the first input, from ``<model>/config.pbtxt`` beside the version dir."""
    try:
        text = (model_file.parent.parent / "config.pbtxt").read_text()
    except OSError:
        return default
    m = re.search(r"input\s*\[.*?dims:\s*\[\s*(\d+)\s*\]", text, re.S)
    return int(m.group(1)) if m else default


def reference_model():
    """The mlp architecture built in memory (Linear-ReLU-Linear, 256 wide, seed 0), scripted.

    Used only when no model repository can be built, so the baseline still has a model to time.
    """
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH)
    )
    return torch.jit.script(net.eval())


def measure(
    model_file: Path | None,
    seconds: float = 0.5,
    batch_sizes=BATCH_SIZES,
    width: int | None = None,
) -> dict:
    """Time the model at each batch size; ``model_file=None`` times :func:`reference_model`."""
    import torch

    if width is None:
        width = WIDTH if model_file is None else config_width(model_file)
    sizes = list(dict.fromkeys(batch_sizes))
    torch.set_num_threads(1)
    if model_file is None:
        model = reference_model()
    else:
        model = torch.jit.load(str(model_file), map_location="cpu")
    model.eval()
    gen = torch.Generator().manual_seed(0)
    rows = []
    perf = time.perf_counter
    with torch.inference_mode():
        inputs = {bs: torch.randn(bs, width, generator=gen, dtype=torch.float32) for bs in sizes}
        for x in inputs.values():
            # Warm-up (TorchScript profiling runs, caches): 20 calls or about `seconds` / 5.
            t0 = perf()
            for i in range(20):
                model(x)
                if i >= 2 and perf() - t0 > seconds / 5:
                    break
        # Single calls, round-robin over the batch sizes until `seconds` per size are spent
        # (at least 5 calls each), so a burst of load from elsewhere on a shared machine hits
        # every size alike; the median resists such preemptions, the mean is kept beside it.
        times: dict[int, list[float]] = {bs: [] for bs in sizes}
        t_end = perf() + seconds * len(sizes)
        while perf() < t_end or min(len(t) for t in times.values()) < 5:
            for bs, x in inputs.items():
                t0 = perf()
                model(x)
                times[bs].append(perf() - t0)
        for bs in sizes:
            ts = sorted(times[bs])
            median = ts[len(ts) // 2]
            mean = sum(ts) / len(ts)
            rows.append(
                {
                    "batch_size": bs,
                    "calls": len(ts),
                    "us_per_call": median * 1e6,
                    "us_per_call_mean": mean * 1e6,
                    "us_per_row": median / bs * 1e6,
                    "rows_per_s": bs / median,
                }
            )
    return {
        "model_file": str(model_file) if model_file else "reference (built in memory)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "width": width,
        "batches": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        "| batch | rows/s | µs/row | µs/call (median) | µs/call (mean) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["batches"]:
        lines.append(
            f"| {r['batch_size']} | {r['rows_per_s']:,.0f} | {r['us_per_row']:.1f} "
            f"| {r['us_per_call']:.1f} | {r.get('us_per_call_mean', r['us_per_call']):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-repository", type=Path)
    src.add_argument("--model-file", type=Path)
    src.add_argument(
        "--reference", action="store_true", help="time the mlp architecture built in memory"
    )
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--width", type=int, default=None, help="values per row (default: config)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per batch size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.reference:
        model_file = None
    else:
        model_file = args.model_file or find_model_file(args.model_repository, args.model)
    sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    res = measure(model_file, args.seconds, sizes, args.width)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(to_markdown(res))


if __name__ == "__main__":
    main()
