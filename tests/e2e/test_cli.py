"""The local stack's verbs (what `./run.sh start -d|status|token|scale|stop` call), on a
stack of its own: start in the background, report status, sign users in, scale the workers,
stop everything."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from localcloud.up import free_port
from tests.conftest import ROOT, unique

pytestmark = [pytest.mark.e2e, pytest.mark.processes]
UP = [sys.executable, "-m", "localcloud", "up"]
FAKE_MODEL = [sys.executable, "-m", "localcloud", "fake-openai"]
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcloud", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def token(stack: str, name: str, *flags: str) -> str:
    """`./run.sh token NAME [--admin]`'s last line: the access token, checked to be a JWT of
    ``name``."""
    run = subprocess.run(
        [str(ROOT / "run.sh"), "token", name, *flags, "--stack", stack],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert JWT.match(last), run.stdout
    header, payload = (
        json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in last.split(".")[:2]
    )
    assert header["alg"] == "RS256"
    assert payload["username"] == name and payload["token_use"] == "access"
    return last


def test_start_status_scale_stop(tmp_path: Path) -> None:
    # GIVEN an OpenAI-compatible server of our own (a second fake model, 7 tokens an answer)
    model_port = free_port()
    model = subprocess.Popen(
        [*FAKE_MODEL, "--port", str(model_port), "--tokens", "7", "--ttft-ms", "10"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    # AND a .env naming it, saved on Windows (CRLF line ends) with stray blanks
    env_file = tmp_path / ".env"
    env_file.write_bytes(
        b"# written on Windows\r\n"
        + f"OPENAI_BASE_URL = http://127.0.0.1:{model_port}/v1 \r\n".encode()
        + b"OPENAI_API_KEY=sk-from-dotenv\r\n"
    )
    stack = unique("cli")
    state = ROOT / ".localcloud" / stack / "state.json"
    ports = [f"--{name}-port={free_port()}" for name in ("aws", "api", "stream", "frontend")]
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [*UP, "--stack", stack, "--workers", "2", "--env-file", str(env_file), *ports],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        # WHEN it starts: `up` is ready when it says so (after state.json, it signs its
        # demo user in)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert up.poll() is None, "up exited early:\n" + log.read_text()
            if state.exists() and "llmstream is up" in log.read_text():
                break
            time.sleep(0.2)
        # THEN it names what it took from .env (never the values), runs no fake model of
        # its own, and its answers come from the server the file names (below)
        out = log.read_text()
        assert ".env: OPENAI_API_KEY, OPENAI_BASE_URL" in out
        assert "sk-from-dotenv" not in out and "fake openai" not in out
        assert f"model         http://127.0.0.1:{model_port}/v1" in out
        asked = httpx.get(f"http://127.0.0.1:{model_port}/fake/stats").json()["chat_requests"]
        # status: every component running, health ok, queue depths shown
        status = cli("status", "--stack", stack)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "2 worker(s) per queue" in status.stdout and "DEAD" not in status.stdout
        assert "queue dead_letter" in status.stdout
        assert "health: ok" in status.stdout  # /health/full, which status reads as demo (admin)
        # token: a user's access token on the last line, which the api takes; --admin makes
        # an operator, who may read /stats
        api = json.loads(state.read_text())["urls"]["api"]
        alice = {"Authorization": f"Bearer {token(stack, 'cli-alice')}"}
        ops = {"Authorization": f"Bearer {token(stack, 'cli-ops', '--admin')}"}
        assert httpx.get(f"{api}/stats", headers=alice, timeout=30).status_code == 403
        assert httpx.get(f"{api}/stats", headers=ops, timeout=30).status_code == 200
        # scale: the pollers restart with the new count, and answers still flow
        scaled = cli("scale", "1", "--stack", stack)
        assert scaled.returncode == 0, scaled.stdout
        assert json.loads(state.read_text())["workers"] == 1
        resp = httpx.post(f"{api}/chat", json={"message": "after scaling"}, headers=alice)
        assert resp.status_code == 202, resp.text
        body = resp.json()
        with httpx.stream("GET", body["stream_url"], timeout=30) as resp:
            last = [line for line in resp.iter_lines() if line.startswith("data:")][-1]
        assert json.loads(last[5:])["type"] == "done"
        stats = httpx.get(f"http://127.0.0.1:{model_port}/fake/stats").json()
        assert stats["chat_requests"] == asked + 1  # the answer came from the .env's model
        # stop: everything ends, and status says so
        assert cli("stop", "--stack", stack).returncode == 0
        up.wait(timeout=30)
        assert cli("status", "--stack", stack).returncode == 3
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(30)
        model.terminate()
        model.wait(10)
        shutil.rmtree(ROOT / ".localcloud" / stack, ignore_errors=True)
