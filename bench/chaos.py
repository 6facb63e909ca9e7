"""Chaos report (``make chaos``): run the fault scenarios and print what each one did.

Runs ``pytest --group e2e tests/faults`` with ``CHAOS_REPORT`` naming a JSON file, in which every
scenario records its calls: how many, how many ended OK, how many failed (an error status or a
wrong answer, expected ones included, e.g. DEADLINE_EXCEEDED in the deadline scenario), how
many were lost (no answer by the deadline plus a grace period: a hang), and the slowest. Then
prints one Markdown table row per scenario, with the statuses seen and the test's outcome.

    python -m bench.chaos [--json FILE] [--markdown FILE] [-- extra pytest arguments]

Exits with pytest's status, so a failing scenario fails ``make chaos``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("scenario", "calls", "ok", "failed", "lost", "max latency ms", "statuses", "result")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _order(record: dict[str, Any]) -> tuple[int, str]:
    """Scenarios in their number's order ("9a ..." after "9 ..."), unnumbered ones last."""
    head = record["scenario"].split(" ", 1)[0]
    digits = "".join(c for c in head if c.isdigit())
    return (int(digits) if digits else 10**6, head)


def render(report: dict[str, Any]) -> str:
    """The Markdown table of a chaos report, then the scenarios' notes."""
    outcomes: dict[str, str] = report.get("outcomes", {})
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---", "--:", "--:", "--:", "--:", "--:", "---", "---"]) + "|",
    ]
    notes = []
    for rec in sorted(report.get("records", []), key=_order):
        statuses = ", ".join(f"{k} {v}" for k, v in rec["statuses"].items() if k != "OK")
        row = (
            rec["scenario"],
            rec["calls"],
            rec["ok"],
            rec["failed"],
            rec["lost"],
            f"{rec['max_latency_ms']:.0f}",
            statuses or "-",
            outcomes.get(rec["test"], "?"),
        )
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        if rec.get("notes"):
            notes.append(f"- {rec['scenario']}: {rec['notes']}")
    recorded = {rec["test"] for rec in report.get("records", [])}
    for test, outcome in sorted(outcomes.items()):
        if test not in recorded:
            notes.append(f"- {test}: {outcome} (no record)")
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(notes)
    text += f"\n\nTotal {report.get('duration_s', 0):.0f} s, pytest exit status "
    text += f"{report.get('exitstatus', '?')}.\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="keep the JSON report here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        json_path = args.json or Path(tmp) / "chaos.json"
        json_path.unlink(missing_ok=True)
        env = dict(os.environ, CHAOS_REPORT=str(json_path))
        command = [
            sys.executable, "-m", "pytest", "--group", "e2e", "tests/faults", "-q", "-rxX",
            *args.pytest_args,
        ]  # fmt: skip
        started = time.monotonic()
        status = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False).returncode
        elapsed = time.monotonic() - started
        if not json_path.exists():
            print(f"no chaos report was written (pytest exit status {status})", file=sys.stderr)
            return status or 1
        report = json.loads(json_path.read_text())
    table = render(report)
    print()
    print(table)
    print(f"Wall time {elapsed:.0f} s.")
    if args.markdown:
        args.markdown.write_text(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
