"""Running the local stack's processes the way a service manager would.

* A child dies with its supervisor, however the supervisor dies (kill -9, an OOM kill, a
  closed terminal): the kernel's parent-death signal, set in the child before it runs its
  program, and kept across exec.
* Ports are checked before anything starts, and a port in use is named with the process
  that holds it; readiness counts only a listener that is the child itself, never a
  stranger (or a stale stack) answering on the same port.
* What was started is written down (pids with their start times), so `stop` ends what is
  left even when the supervisor is gone, and only processes that are still the ones it
  started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import psutil

_PR_SET_PDEATHSIG = 1
_libc: Any = None


def die_with_parent() -> None:
    """In a child between fork and exec: SIGKILL it when its parent goes away."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def preexec() -> None:
    """subprocess ``preexec_fn``: the child dies with the supervisor."""
    die_with_parent()


class PortInUse(RuntimeError):
    pass


def holder(port: int, host: str = "127.0.0.1") -> str | None:
    """Who listens on ``port``: "pid N (command)" where it can be read, else None."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        connections = []
    for c in connections:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                return "a process this user cannot see"
            try:
                cmd = " ".join(psutil.Process(c.pid).cmdline())[:160]
            except psutil.Error:
                cmd = "?"
            return f"pid {c.pid} ({cmd})"
    return None


def free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """PortInUse naming every port that is taken, its holder and the way out."""
    taken = []
    for name, port in ports.items():
        if not free(port, host):
            who = holder(port, host) or "another process"
            taken.append(f"  port {port} ({name}) is in use by {who}")
    if taken:
        raise PortInUse(
            "cannot start:\n"
            + "\n".join(taken)
            + "\nIf that is a stack of ours left running, `./run.sh stop` ends it; otherwise "
            "stop that process, or start on other ports (`./run.sh start --port-offset 100`)."
        )


def listens(pid: int, port: int) -> bool:
    """True if process ``pid`` itself listens on ``port`` (not merely someone on it)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections
    )


@dataclass(frozen=True)
class Recorded:
    """A process as the state file remembers it."""

    name: str
    pid: int
    started: float  # psutil's create_time: tells the same pid of a later process apart

    @classmethod
    def of(cls, name: str, pid: int) -> Recorded:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = 0.0
        return cls(name, pid, started)

    def running(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.started) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def end(processes: list[Recorded], grace: float = 5.0) -> list[Recorded]:
    """SIGTERM each still-running process's group, SIGKILL what is left after ``grace``;
    return the ones that were running."""
    alive = [p for p in processes if p.running()]
    for p in alive:
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.running() for p in alive):
        time.sleep(0.1)
    for p in alive:
        if p.running():
            _signal(p.pid, signal.SIGKILL)
    return alive


def _signal(pid: int, sig: int) -> None:
    # Each component leads a process group of its own (its children with it).
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
