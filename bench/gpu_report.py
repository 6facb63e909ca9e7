"""The Markdown page of a ``make bench-gpu`` report (``bench.gpu`` writes the JSON beside it)."""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _size(nbytes: int) -> str:
    return f"{nbytes // 2**20} MiB" if nbytes >= 2**20 else f"{nbytes // 2**10} KiB"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# make bench-gpu, {report.get('timestamp', '?')}", ""]
    inproc = report.get("inprocess", {})
    info = inproc.get("info", {})
    if report.get("dry_run"):
        lines += [
            "**DRY RUN: no usable GPU "
            + (
                "(this host has an NVIDIA GPU but torch cannot use CUDA)"
                if report.get("gpu_host")
                else "on this host"
            )
            + ". Every step ran on the CPU with smaller sizes; no figure below is a GPU "
            "figure.**",
            "",
        ]
    torch_state = report.get("torch_after") or report.get("torch_before") or {}
    lines.append(
        f"Device: {info.get('gpu_name', 'CPU')} ({info.get('gpus', 0)} GPU(s)); torch "
        f"{torch_state.get('torch')} (CUDA {torch_state.get('cuda')}); "
        f"{report.get('seconds', '?')} s in all; stages (s): {report.get('stages', {})}."
    )
    if "install" in report:
        inst = report["install"]
        lines.append(f"Installed `{inst['spec']}`: exit {inst['rc']} in {inst['seconds']} s.")
    tests = report.get("tests")
    if tests:
        required = "skips fail" if tests["required"] else "skips allowed: no GPU"
        lines.append(f"GPU tests ({required}): exit {tests['rc']}, `{tests['summary']}`.")
    if report.get("error"):
        lines += ["", f"**Error:** {report['error']}"]
    lines.append("")
    if "error" in inproc:
        lines += ["In-process measurements failed:", "```", inproc["error"], "```", ""]
    copies = inproc.get("copies")
    if copies:
        lines += [
            "## Host→device copies (GB/s): what pinned staging buys",
            "",
            "| size | pageable | pinned | pinned / pageable |",
            "|---:|---:|---:|---:|",
        ]
        for c in copies:
            ratio = c["pinned_gb_s"] / c["pageable_gb_s"] if c["pageable_gb_s"] else None
            lines.append(
                f"| {_size(c['bytes'])} | {_num(c['pageable_gb_s'], 2)} "
                f"| {_num(c['pinned_gb_s'], 2)} | {_num(ratio, 2)}x |"
            )
        lines.append("")
    served = report.get("served", {})
    if "error" in served:
        lines += ["Served measurements failed:", "```", served["error"], "```", ""]
    for model, rows in inproc.get("paths", {}).items():
        lines += [
            f"## `{model}`: rows/s in-process ({inproc.get('device')})",
            "",
            "| batch | on the device | naive (pageable, default stream) | worker executor |",
            "|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['batch']} | {_num(r['device_rows_s'])} | "
                f"{_num(r['naive_rows_s'])} | {_num(r['executor_rows_s'])} |"
            )
        executor = {r["batch"]: r["executor_rows_s"] for r in rows}
        points = served.get("points", {}).get(model, [])
        if points:
            lines += [
                "",
                f"Served (1-row requests, worker on {served.get('device')}); the last column "
                "sets it against the in-process executor at a batch of the same size:",
                "",
                "| concurrency | rows/s | p50 ms | p99 ms | errors | served / in-process |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for pt in points:
                base = executor.get(pt["concurrency"])
                ratio = pt["rows_s"] / base if base else None
                lines.append(
                    f"| {pt['concurrency']} | {_num(pt['rows_s'])} | "
                    f"{_num(pt['p50_ms'], 2)} | {_num(pt['p99_ms'], 2)} | "
                    f"{pt['errors']} | {_num(ratio, 2)} |"
                )
        lines.append("")
    ov = inproc.get("overlap")
    if ov:
        lines.append(
            f"Stream overlap, `{ov['model']}` at batch {ov['batch']}: one instance "
            f"{_num(ov['one_rows_s'])} rows/s, two instances on their own streams "
            f"{_num(ov['two_rows_s'])} rows/s ({_num(ov['two_over_one'], 2)}x)."
        )
    lines.append("")
    return "\n".join(lines)
