"""Process sampling (psutil) against this test's own process and a child it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.lifecycle import Proc
from bench.procs import (
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
    assert tree_wakeups(os.getpid()) > 0
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
