"""Stopping processes by PID: shared by the pseudo-cluster (its daemons), the deployment watchdog
(spark-submit and its children) and the test helpers (commands they ran)."""
from __future__ import annotations

import contextlib
import subprocess

import psutil

STOP_TIMEOUT = 20.0


def terminate(procs: list[psutil.Process], timeout: float = STOP_TIMEOUT) -> list[psutil.Process]:
    """SIGTERM, wait, then SIGKILL; returns processes still alive (should be none)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def children(p: psutil.Process) -> list[psutil.Process]:
    """``p``'s descendants; none when it is already gone."""
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def with_descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    """``procs`` and all their descendants, each once."""
    out, seen = [], set()
    for p in procs:
        for q in [p, *children(p)]:
            if q.pid not in seen:
                seen.add(q.pid)
                out.append(q)
    return out


def is_running(p: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie cannot be signalled any more)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_tree(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a command we started and everything it started, then reap it."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = []
    terminate(procs, timeout=timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
