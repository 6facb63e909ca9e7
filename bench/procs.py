"""Process sampling: CPU seconds, wake-ups and memory of process trees, and machine-wide CPU.

Everything goes through psutil except two figures psutil does not expose on Linux: voluntary
context switches summed over every thread (``num_ctx_switches`` is the leader thread's only) and
the peak resident set ``VmHWM``; those two are read from ``/proc/<pid>[/task/<tid>]/status``.
A process that exits while it is sampled simply stops counting.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants ([] when ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except _GONE:
        return []


def family(pid: int) -> list[psutil.Process]:
    """``tree(pid)`` plus every other live process of the session ``pid`` leads, if it leads
    one: a process that left the tree (its parent exited, it was reparented) stays in the
    session, so a system that runs as a tree of servers (PyTriton) is counted whole."""
    procs = {p.pid: p for p in tree(pid)}
    if not procs:
        return []
    try:
        leads = os.getsid(pid) == pid
    except OSError:
        leads = False
    for member in session_members(pid) if leads else []:
        if member not in procs:
            try:
                procs[member] = psutil.Process(member)
            except _GONE:
                continue
    return list(procs.values())


def by_name(procs: list[psutil.Process], prefix: str = "") -> dict[str, list[psutil.Process]]:
    """These processes grouped by command name (``prefix`` + ``comm``), in the order first
    seen; a process gone meanwhile is left out."""
    groups: dict[str, list[psutil.Process]] = {}
    for p in procs:
        try:
            name = p.name()
        except _GONE:
            continue
        groups.setdefault(prefix + name, []).append(p)
    return groups


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except _GONE:
        return 0.0
    # Only the process's own time: reaped children's time is already gone from the live tree.
    return t.user + t.system


def cpu_s(procs: list[psutil.Process]) -> float:
    """utime + stime (seconds) of these processes."""
    return sum(_cpu_s(p) for p in procs)


def own_cpu_s() -> float:
    """utime + stime (seconds) of this process alone (its children are counted as theirs)."""
    return _cpu_s(psutil.Process())


def tree_cpu_s(pid: int) -> float:
    """utime + stime (seconds) of ``pid`` and its live descendants."""
    return cpu_s(tree(pid))


def _status_field(path: Path, key: str) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def _thread_wakeups(pid: int) -> int:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total = 0
    for tid in tids:
        n = _status_field(Path(f"/proc/{pid}/task/{tid}/status"), "voluntary_ctxt_switches:")
        total += n or 0
    return total


def wakeups(procs: list[psutil.Process]) -> int:
    """Voluntary context switches (sleeps that ended in a wake-up) of every thread of these
    processes."""
    return sum(_thread_wakeups(p.pid) for p in procs)


def tree_wakeups(pid: int) -> int:
    """``wakeups`` of ``pid`` and its live descendants."""
    return wakeups(tree(pid))


def proc_mem_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of one process, in MiB."""
    out: dict[str, float] = {}
    try:
        out["VmRSS"] = psutil.Process(pid).memory_info().rss / 2**20
    except _GONE:
        return out
    hwm_kib = _status_field(Path(f"/proc/{pid}/status"), "VmHWM:")
    if hwm_kib is not None:
        out["VmHWM"] = hwm_kib / 1024
    return out


def _rss_mb(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_info().rss) / 2**20
    except _GONE:
        return 0.0


def rss_mb(procs: list[psutil.Process]) -> float:
    """Resident memory of these processes, MiB (shared pages count each time)."""
    return sum(_rss_mb(p) for p in procs)


def tree_rss_mb(pid: int) -> float:
    """``rss_mb`` of ``pid`` and its live descendants."""
    return rss_mb(tree(pid))


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    t = psutil.cpu_times()
    # user nice system irq softirq steal; idle and iowait are not busy, guest time is already
    # inside user and nice.
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def loadavg() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` other than its leader."""
    out = []
    for pid in psutil.pids():
        if pid == sid:
            continue
        try:
            if os.getsid(pid) == sid:
                out.append(pid)
        except OSError:
            continue
    return out
