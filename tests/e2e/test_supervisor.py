"""The local stack as a service manager runs services: no orphans after its supervisor dies,
no stranger's port taken for its own, every component gone within seconds of SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from localcloud.processes import Recorded
from localcloud.up import Stack, free_port
from tests.conftest import ROOT, unique
from tests.e2e.conftest import stack_options

pytestmark = [pytest.mark.e2e, pytest.mark.processes]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcloud", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def port_args() -> list[str]:
    return [
        f"--{name}-port={free_port()}"
        for name in ("aws", "api", "stream", "openai", "frontend", "redis")
    ]


@pytest.fixture
def stack_name() -> Iterator[str]:
    name = unique("svc")
    yield name
    cli("stop", "--stack", name)
    for leftover in (ROOT / ".localcloud" / name).glob("*.json"):
        leftover.unlink()


def start_detached(name: str, ports: list[str]) -> subprocess.Popen[bytes]:
    """`./run.sh start -d`: the supervisor in the background; wait until it is up."""
    folder = ROOT / ".localcloud" / name
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "up.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "up", "--stack", name, "--workers", "1", *ports],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (folder / "state.json").exists():
        assert supervisor.poll() is None, (folder / "up.log").read_text()
        assert time.monotonic() < deadline, "the stack did not come up"
        time.sleep(0.2)
    return supervisor


def recorded(name: str) -> list[Recorded]:
    path = ROOT / ".localcloud" / name / "processes.json"
    return [Recorded(**r) for r in json.loads(path.read_text())]


def test_a_supervisor_killed_hard_leaves_no_process_behind(stack_name: str) -> None:
    ports = port_args()
    supervisor = start_detached(stack_name, ports)
    components = [r for r in recorded(stack_name) if r.name != "supervisor"]
    assert {r.name for r in components} >= {"aws", "api", "stream", "worker", "frontend"}
    # WHEN the supervisor is killed with SIGKILL (an OOM kill, a closed terminal)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    killed = time.monotonic()
    # THEN every component (and the worker's environments) is gone within 5 s
    while any(r.running() for r in components):
        assert time.monotonic() - killed < 5, [r for r in components if r.running()]
        time.sleep(0.1)
    # AND status and stop say so, and the next start comes up on the same ports
    status = cli("status", "--stack", stack_name)
    assert status.returncode == 3 and "not running" in status.stdout, status.stdout
    assert cli("stop", "--stack", stack_name).returncode == 0
    again = start_detached(stack_name, ports)
    assert cli("status", "--stack", stack_name).returncode == 0
    stopped = cli("stop", "--stack", stack_name)
    assert "stopped" in stopped.stdout
    again.wait(30)
    assert not any(r.running() for r in recorded_or_empty(stack_name))


def recorded_or_empty(name: str) -> list[Recorded]:
    try:
        return recorded(name)
    except FileNotFoundError:
        return []


def test_status_tells_a_half_dead_stack_and_stop_ends_what_is_left(
    stack_name: str, tmp_path: Path
) -> None:
    # GIVEN a stack whose supervisor is gone while one of its components still runs (a
    # process the kernel's parent-death signal could not reach: started by hand, say)
    survivor = subprocess.Popen(["sleep", "120"], start_new_session=True, stdin=subprocess.DEVNULL)
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder = ROOT / ".localcloud" / stack_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "processes.json").write_text(
        json.dumps(
            [
                {"name": "supervisor", "pid": gone.pid, "started": 1.0},
                Recorded.of("api", survivor.pid).__dict__,
            ]
        )
    )
    try:
        # THEN status names it half-dead, with the survivor
        status = cli("status", "--stack", stack_name)
        assert status.returncode == 1, status.stdout
        assert "HALF-DEAD" in status.stdout and str(survivor.pid) in status.stdout
        # AND stop ends the survivor, and says so
        stop = cli("stop", "--stack", stack_name)
        assert "stopped 1 leftover process(es) (api)" in stop.stdout, stop.stdout
        assert survivor.wait(5) is not None
        assert cli("status", "--stack", stack_name).returncode == 3
    finally:
        if survivor.poll() is None:
            survivor.kill()


def test_a_port_held_by_a_stranger_fails_at_once_and_starts_nothing(stack_name: str) -> None:
    # GIVEN another program listening on the port the AWS endpoint wants
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        held = stranger.getsockname()[1]
        ports = [p for p in port_args() if not p.startswith("--aws-port")]
        # WHEN the stack starts
        started = time.monotonic()
        run = cli("up", "--stack", stack_name, f"--aws-port={held}", *ports, timeout=60)
        # THEN it fails at once, naming the port and its holder, and how to get out
        assert run.returncode != 0
        assert time.monotonic() - started < 15
        assert f"port {held} (aws) is in use by pid {os.getpid()}" in run.stdout, run.stdout
        assert "./run.sh stop" in run.stdout and "--port-offset" in run.stdout
    # AND nothing of it runs
    assert not (ROOT / ".localcloud" / stack_name / "processes.json").exists()
    assert [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if stack_name in " ".join(p.info["cmdline"] or [])
    ] == []


def test_every_component_ends_within_5s_of_sigterm_with_the_endpoint_gone() -> None:
    # an emulator of its own to kill (never one a test session shares between stacks)
    stack = Stack(stack_options("e2e-sigterm", workers=2, aws="moto", external_env=None))
    stack.start()
    try:
        # GIVEN the AWS endpoint gone (the pollers' long polls and retries fail)
        stack.kill("aws")
        time.sleep(1)
        # WHEN each other component gets SIGTERM, THEN it exits within 5 s
        for name, proc in list(stack.procs.items()):
            if name == "aws":
                continue
            children = psutil.Process(proc.pid).children(recursive=True)
            began = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
            took = time.monotonic() - began
            assert took < 5, (name, took)
            for child in children:  # the worker's environments with it
                assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        stack.stop()
