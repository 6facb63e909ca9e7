"""Process sampling (psutil) against this test's own process and a child it starts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.lifecycle import Proc
from bench.procs import (
    by_name,
    family,
    machine_busy_s,
    own_cpu_s,
    proc_mem_mb,
    session_members,
    tree,
    tree_cpu_s,
    tree_rss_mb,
    tree_wakeups,
)


def test_own_process_is_sampled() -> None:
    t0 = tree_cpu_s(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert tree_cpu_s(os.getpid()) > t0
    assert 0 < own_cpu_s() <= tree_cpu_s(os.getpid())
    mem = proc_mem_mb(os.getpid())
    assert mem["VmRSS"] > 1 and mem["VmHWM"] >= mem["VmRSS"] * 0.5
    assert tree_rss_mb(os.getpid()) >= mem["VmRSS"] * 0.99
    before = tree_wakeups(os.getpid())
    time.sleep(0.01)  # a sleep that ends is a voluntary context switch, so at least one counts
    assert tree_wakeups(os.getpid()) > before
    assert machine_busy_s() > 0


def test_a_gone_process_counts_nothing() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert tree(p.pid) == []
    assert tree_cpu_s(p.pid) == 0.0
    assert proc_mem_mb(p.pid) == {}


def test_stop_reaches_a_grandchild_in_its_own_group(tmp_path: Path) -> None:
    # The child starts a grandchild in a new process group, which killpg alone would miss.
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "process_group=0); time.sleep(60)"
    )
    proc = Proc("sleeper", [sys.executable, "-c", code], tmp_path)
    deadline = time.monotonic() + 10
    while len(tree(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = session_members(proc.pid)
    assert members, "the grandchild should be in the child's session"
    proc.stop(grace=2.0)
    time.sleep(0.2)
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in members)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_family_keeps_a_process_that_left_the_tree_and_groups_by_name(tmp_path: Path) -> None:
    # The child starts a grandchild and exits: the grandchild is reparented (out of the tree)
    # but stays in the session the Proc leads, as a daemonising server of a peer would.
    code = (
        "import subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "import time; time.sleep(1.0)"
    )
    script = f'{shlex.quote(sys.executable)} -c "{code}"; sleep 60; exit 0'
    lead = Proc("lead", ["sh", "-c", script], tmp_path)
    try:
        deadline = time.monotonic() + 15
        # sh -> python (exits after 1 s) -> python grandchild, reparented out of the tree.
        orphans: list[int] = []
        while not orphans and time.monotonic() < deadline:
            orphans = _reparented(lead.pid)
            time.sleep(0.05)
        assert orphans, "the grandchild should have left the tree"
        members = _pids(family(lead.pid))
        assert lead.pid in members and set(orphans) <= members
        everyone = family(lead.pid)
        groups = by_name(everyone, prefix="x:")
        lead_name = psutil.Process(lead.pid).name()  # sh (not exec'd away: the script goes on)
        assert next(iter(groups)) == "x:" + lead_name  # the leader is seen first
        assert lead.pid in _pids(groups["x:" + lead_name])
        orphan_name = psutil.Process(orphans[0]).name()
        assert orphans[0] in _pids(groups["x:" + orphan_name])
        assert sum(len(ps) for ps in groups.values()) == len(everyone)
    finally:
        lead.stop(grace=2.0)
    assert family(lead.pid) == []


def _reparented(sid: int) -> list[int]:
    """Live members of session ``sid`` whose parent is outside ``tree(sid)``."""
    out = []
    for pid in session_members(sid):
        try:
            if psutil.Process(pid).ppid() not in _pids(tree(sid)):
                out.append(pid)
        except psutil.Error:
            continue
    return out


def _pids(procs: list[psutil.Process]) -> set[int]:
    return {p.pid for p in procs}
