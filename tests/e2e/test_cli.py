"""The local stack's verbs (what `./run.sh start -d|status|scale|stop` call), on a stack of
its own: start in the background, report status, scale the workers, stop everything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from localcloud.up import free_port
from tests.conftest import ROOT, unique

pytestmark = pytest.mark.e2e


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcloud", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_start_status_scale_stop() -> None:
    stack = unique("cli")
    state = ROOT / ".localcloud" / stack / "state.json"
    ports = [
        f"--{name}-port={free_port()}" for name in ("aws", "api", "stream", "openai", "frontend")
    ]
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            "up",
            "--stack",
            stack,
            "--workers",
            "2",
            "--fake-ttft-ms",
            "20",
            *ports,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not state.exists() and time.monotonic() < deadline:
            assert up.poll() is None, "up exited early"
            time.sleep(0.2)
        # status: every component running, health ok, queue depths shown
        status = cli("status", "--stack", stack)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "2 worker(s) per queue" in status.stdout and "DEAD" not in status.stdout
        assert "queue dead_letter" in status.stdout
        # scale: the pollers restart with the new count, and answers still flow
        scaled = cli("scale", "1", "--stack", stack)
        assert scaled.returncode == 0, scaled.stdout
        assert json.loads(state.read_text())["workers"] == 1
        api = json.loads(state.read_text())["urls"]["api"]
        body = httpx.post(f"{api}/chat", json={"message": "after scaling"}).json()
        with httpx.stream("GET", body["stream_url"], timeout=30) as resp:
            last = [line for line in resp.iter_lines() if line.startswith("data:")][-1]
        assert json.loads(last[5:])["type"] == "done"
        # stop: everything ends, and status says so
        assert cli("stop", "--stack", stack).returncode == 0
        up.wait(timeout=30)
        assert cli("status", "--stack", stack).returncode == 3
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(30)
        shutil.rmtree(ROOT / ".localcloud" / stack, ignore_errors=True)
