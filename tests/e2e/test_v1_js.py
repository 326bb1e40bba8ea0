"""/v1 through the official OpenAI JavaScript SDK: tests/js/v1_flow.mjs run by `node` against
the whole local stack, with the SDK that `./run.sh test` installs from tests/js's lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from localcloud.up import Stack
from tests.conftest import ROOT
from tests.e2e.conftest import user
from tests.e2e.v1 import DEADLINE, answer_to, base_url, model, sent_to_model

pytestmark = pytest.mark.e2e
FLOW = ROOT / "tests" / "js" / "v1_flow.mjs"
# Where run.sh installs tests/js/package-lock.json (`npm ci`, kept while the lock is the same)
SDK = ROOT / ".localcloud" / "tools" / "js-sdk" / "node_modules"


def test_the_javascript_sdk_resumes_a_background_answer_and_streams_a_chat(
    local_stack: Stack, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None or not (SDK / "openai").is_dir():
        pytest.fail(f"node and the openai npm package in {SDK}: ./run.sh test installs them")
    # The script beside the installed packages, as `import "openai"` finds them
    shutil.copy(FLOW, tmp_path)
    (tmp_path / "node_modules").symlink_to(SDK)
    mark = uuid.uuid4().hex[:12]
    env = {
        **os.environ,
        "BASE_URL": base_url(local_stack),
        "API_KEY": user(local_stack, "v1-js").access_token,
        "MODEL": model(local_stack),
        "MARK": mark,
        "HANG_SECONDS": str(int(DEADLINE)),
    }
    run = subprocess.run(
        [node, str(tmp_path / FLOW.name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE + 30,
        check=False,
    )
    assert run.stdout.strip(), run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    # THEN every check of the script passed, with the pinned SDK
    assert run.returncode == 0 and summary["ok"], (summary, run.stderr)
    lock = json.loads((FLOW.parent / "package-lock.json").read_text())
    assert summary["sdk"] == lock["packages"]["node_modules/openai"]["version"]
    # AND what it read is the model's answers to what it sent
    [resumed] = sent_to_model(local_stack, f"resumed in JavaScript {mark}")
    assert summary["responses"]["output_text"] == answer_to(resumed)
    assert summary["responses"]["events"] > summary["responses"]["read_before_dropping"]
    [chat] = sent_to_model(local_stack, f"chat in JavaScript {mark}")
    assert summary["chat"]["text"] == answer_to(chat)
    assert summary["chat"]["usage"]["completion_tokens"] > 0
