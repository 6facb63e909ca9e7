"""Throughput against p99 latency, one line per system, one panel per model, from a result JSON.

Needs only matplotlib (not a project dependency): ``bench.report.plot`` runs this module with an
interpreter that has it (the project's, ``bench/.venv-peers`` or a small ``bench/.venv-plot``).

    python -m bench.plot bench/results/run-<stamp>.json out.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLORS = {
    "bare": "#7f7f7f",
    "ours": "#d62728",
    "pytriton": "#1f77b4",
    "ray": "#2ca02c",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src, dst = Path(argv[0]), Path(argv[1])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    report = json.loads(src.read_text())
    meta = report["meta"]
    rows = [r for r in report["summary"] if r.get("throughput") and r.get("p99_ms")]
    models = [m for m in meta.get("models", []) if any(r["model"] == m for r in rows)]
    if not models:
        print("nothing to plot", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        systems = dict.fromkeys(r["system"] for r in rows if r["model"] == model)
        for system in systems:
            pts = sorted(
                (r for r in rows if r["model"] == model and r["system"] == system),
                key=lambda r: r["concurrency"],
            )
            xs = [r["p99_ms"] for r in pts]
            ys = [r["throughput"] for r in pts]
            ax.plot(xs, ys, "o-", color=COLORS.get(system), label=system, lw=1.8, ms=5)
            for r in pts:
                ax.annotate(
                    f"c={r['concurrency']}",
                    (r["p99_ms"], r["throughput"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=COLORS.get(system, "black"),
                )
        ip = (report.get("inprocess") or {}).get(model) or {}
        best = max((b["rows_per_s"] for b in ip.get("batches", [])), default=None)
        top = max(r["throughput"] for r in rows if r["model"] == model)
        if best and best < 3 * top:  # only where the model itself is a ceiling in sight
            ax.axhline(best, ls="--", lw=1, color="black", alpha=0.6)
            ax.annotate(
                "model in-process, best batch (one core)",
                (0.01, best),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(2, 3),
                fontsize=7,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("p99 latency (ms, log scale)")
        ax.set_ylabel("throughput (requests/s)")
        ax.set_title(f"{model}")
        ax.set_ylim(0, max(top, best if best and best < 3 * top else 0) * 1.1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(
        f"{src.stem}: git {meta.get('git')}, {meta.get('cpus')} CPUs, "
        f"{meta.get('duration_s'):g} s per point (up and left is better)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
