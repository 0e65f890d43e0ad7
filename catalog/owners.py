"""Which process runs a piece of work, and whether that process still lives.

An owner is "host:pid:start", the start being the process's creation time in milliseconds, so a
later process that reuses the pid (a restarted container's server is often pid 1 or 7 again) is
not taken for the one that died. Owners written before the start was recorded are "host:pid".
"""

from __future__ import annotations

import os
import socket

import psutil

_mine: tuple[int, str] | None = None  # (pid, owner): recomputed in a forked child


def _started_ms(pid: int) -> int:
    return int(psutil.Process(pid).create_time() * 1000)


def process_owner() -> str:
    global _mine
    pid = os.getpid()
    if _mine is None or _mine[0] != pid:
        _mine = (pid, f"{socket.gethostname()}:{pid}:{_started_ms(pid)}")
    return _mine[1]


def owner_alive(owner: str) -> bool | None:
    """True or False for an owner on this host; None for another host's (only it can tell)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return False  # no owner recorded
    if pid == os.getpid():
        return owner == process_owner()
    try:
        return not started or _started_ms(pid) == int(started)
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def owner_is_gone(owner: str) -> bool:
    """Whether the owner's process has certainly stopped (on this host and not alive); another
    host's work is never judged gone from here."""
    return owner_alive(owner) is False
