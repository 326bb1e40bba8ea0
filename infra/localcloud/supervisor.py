"""The local stack's supervisor: it starts declared components, waits until each is ready,
writes down what runs, and stops, kills or revives them. It knows nothing of what a
component is (an emulator, a function, a poller, a Lambda engine): each is a `Component`
declared in the module of its concern, and this one engine runs them all, as a process
manager runs the entries of its config.

What each process gets from processes.py: it dies with the supervisor however the
supervisor dies, it leads a process group of its own (a stop ends its children too), and
readiness counts only a listener that is the child itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from localcloud import processes
from localcloud.options import StartError
from localcloud.template import ROOT


@dataclass
class Component:
    """One process of the stack, as data: what runs, where, and how to tell it is ready."""

    name: str
    argv: list[str]
    # None: the supervisor's base environment (this process's, with the stack's AWS one).
    env: dict[str, str] | None = None
    cwd: Path = ROOT
    # Ready when a GET of this URL answers below 500 from the child itself (its port).
    health_url: str | None = None
    # Ready when the child itself listens on this port (a server that has no health URL).
    port: int | None = None
    # Ready when this says so (after the checks above).
    ready: Callable[[], bool] | None = None
    timeout: float = 60
    # A store (an emulator, Redis, the Docker engine) stops after everything that uses it.
    store: bool = False


class Supervisor:
    def __init__(self, directory: Path, base_env: Callable[[], dict[str, str]]) -> None:
        self.dir = directory
        self._base_env = base_env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.components: dict[str, Component] = {}
        self._logs: list[IO[bytes]] = []

    # ------------------------------------------------------------------ starting
    def start(self, *components: Component) -> None:
        """Start the components together, then wait until each is ready."""
        for c in components:
            self.spawn(c)
        for c in components:
            self.wait(c.name)

    def spawn(self, c: Component) -> None:
        self.components[c.name] = c
        logfile = self.log(c.name).open("ab")
        self._logs.append(logfile)
        self.procs[c.name] = subprocess.Popen(
            c.argv,
            cwd=c.cwd,
            env=c.env or self._base_env(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and its children
            preexec_fn=processes.preexec,  # and it dies with this supervisor, however it dies
        )
        self.record()

    def wait(self, name: str) -> None:
        c = self.components[name]
        checks: list[Callable[[], bool]] = []
        if c.port is not None:
            checks.append(lambda: processes.listens(self.procs[name].pid, c.port or 0))
        if c.health_url is not None:
            checks.append(self._http_check(name, c.health_url))
        if c.ready is not None:
            checks.append(c.ready)
        self.wait_until(name, lambda: all(check() for check in checks), c.timeout)

    def wait_until(self, name: str, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-2000:]
                raise StartError(f"{name} exited with {proc.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.1)
        raise StartError(f"{name} not ready after {timeout:.0f}s; see {self.log(name)}")

    def _http_check(self, name: str, url: str) -> Callable[[], bool]:
        port = httpx.URL(url).port

        def ready() -> bool:
            # Only our own child counts: a stranger (or a stale stack) answering on the port
            # must not pass for it.
            if port is not None and not processes.listens(self.procs[name].pid, port):
                return False
            try:
                return httpx.get(url, timeout=1.0).status_code < 500
            except httpx.HTTPError:
                return False

        return ready

    # ------------------------------------------------------------------ running
    def record(self) -> None:
        """Write down the processes as started (pids and start times), for `stop` and
        `status` when the supervisor itself is gone."""
        recorded = [processes.Recorded.of("supervisor", os.getpid())] + [
            processes.Recorded.of(name, proc.pid) for name, proc in self.procs.items()
        ]
        tmp = self.processes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.__dict__ for r in recorded], indent=2))
        tmp.replace(self.processes_file)

    @property
    def processes_file(self) -> Path:
        return self.dir / "processes.json"

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def check(self) -> None:
        """Raise if a component has died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StartError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def kill(self, name: str) -> None:
        """Stop one component at once (SIGKILL), as a crash or a cut connection would."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def revive(self, name: str) -> None:
        """Start a component again as it was declared, and wait until it is ready."""
        self.spawn(self.components[name])
        self.wait(name)

    # ------------------------------------------------------------------ stopping
    def stop_gracefully(self, which: Callable[[str], bool]) -> None:
        """SIGINT the chosen components and wait: pollers finish the answers they run (on
        SIGTERM they stop at once, and the answers' messages come back to the queue)."""
        for name in [n for n in self.procs if which(n)]:
            proc = self.procs.pop(name)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=360)
        self.record()

    def stop(self, after_users: Callable[[], None] = lambda: None) -> None:
        """Everything, in two groups: what uses the stores first (the pollers finish their
        long polls and invocations against a live emulator), then the stores;
        ``after_users`` runs between the two."""
        stores = {n for n in self.procs if self.components[n].store}
        users = {n: p for n, p in self.procs.items() if n not in stores}
        last = {n: p for n, p in self.procs.items() if n in stores}
        _end(users.values())
        after_users()
        _end(last.values())
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        self.processes_file.unlink(missing_ok=True)


def _end(group: Iterable[subprocess.Popen[bytes]], grace: float = 10) -> None:
    """SIGTERM each group in reverse start order, SIGKILL what is left after ``grace``."""
    procs = list(group)
    for proc in reversed(procs):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
