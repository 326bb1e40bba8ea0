"""`sam local start-api` runs the api function in Docker against the local stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from localcloud.up import Stack, free_port
from tests.conftest import ROOT
from tests.e2e.conftest import auth
from tests.unit.test_template import sam

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.processes]


def docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="session")  # before the session-scoped stack starts
def need_docker() -> None:
    if not docker_engine():
        pytest.skip("no Docker engine here: `sam local` runs functions in containers")


def test_sam_local_start_api_accepts_a_chat(
    need_docker: None, local_stack: Stack, tmp_path: Path
) -> None:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    subprocess.run(
        [sam(), "build", "--build-dir", str(tmp_path / "build")],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=900,
    )
    port = free_port()
    me = auth(local_stack)  # the stack's pool: the function in Docker checks its tokens too
    proc = subprocess.Popen(
        [
            sam(),
            "local",
            "start-api",
            "--template",
            str(tmp_path / "build" / "template.yaml"),
            "--env-vars",
            str(local_stack.sam_local_env_file()),
            "--docker-network",
            "host",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/chat", json={"message": "hi"}, headers=me, timeout=60
                )
                break
            except httpx.HTTPError:
                time.sleep(2)
        else:
            pytest.fail("sam local start-api did not answer")
        assert resp.status_code == 202, resp.text
        assert json.loads(resp.text)["stream_url"].startswith(local_stack.urls["stream"])
        # and without a sign-in, nothing
        assert (
            httpx.post(
                f"http://127.0.0.1:{port}/chat", json={"message": "hi"}, timeout=60
            ).status_code
            == 401
        )
    finally:
        proc.terminate()
        proc.wait(30)
