"""Only ``fabric/`` builds or reads protocol frames: the tiers use its builders and reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("broker", "frontend", "worker")
WIRE_INTERNALS = re.compile(r"\b(PROTOCOL_TAG|TYPE_FRAME|FRAME_TYPE|pack_batch|unpack_batch)\b")


def tier_sources() -> list[Path]:
    return sorted(p for tier in TIERS for p in (ROOT / tier).rglob("*.py"))


def test_the_tiers_exist() -> None:
    assert len(tier_sources()) > 10


@pytest.mark.parametrize("path", tier_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_tiers_never_touch_the_frame_layout(path: Path) -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if WIRE_INTERNALS.search(line)
    ]
    assert not hits, "build frames with fabric.messages / fabric.inproc:\n" + "\n".join(hits)


def test_the_check_would_see_a_violation() -> None:
    assert WIRE_INTERNALS.search("frames = [PROTOCOL_TAG, TYPE_FRAME[MsgType.REQUEST]]")
    assert not WIRE_INTERNALS.search("messages.request(header, payload)")
