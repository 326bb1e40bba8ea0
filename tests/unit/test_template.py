"""template.yaml: valid SAM, and the single source of every local name and setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud.template import LocalTemplate

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def sam() -> str:
    found = shutil.which("sam", path=str(Path(sys.executable).parent)) or shutil.which("sam")
    if found is None:
        pytest.fail("sam (aws-sam-cli) is not installed: ./run.sh installs it")
    return found


def test_sam_validate_lint_passes() -> None:
    result = subprocess.run(
        [sam(), "validate", "--lint", "--template-file", "template.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_local_names_and_settings_come_from_the_template() -> None:
    tpl = LocalTemplate.load("unit", parameters={"StreamTokenSecret": "s" * 32})
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"

    queue = tpl.props("TaskQueue")
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
    assert tpl.resolve(queue["RedrivePolicy"]["deadLetterTargetArn"]) == (
        "arn:aws:sqs:us-east-1:123456789012:unit-DeadLetterQueue"
    )
    chunks = tpl.props("ChunksTable")
    assert [k["AttributeName"] for k in chunks["KeySchema"]] == ["task_id", "seq"]

    [esm] = tpl.event_sources()
    assert (esm.function, esm.queue) == ("WorkerFunction", "TaskQueue")
    assert esm.report_batch_item_failures

    worker = tpl.functions()["WorkerFunction"]
    assert worker.handler == "llmstream.worker.handler"
    assert worker.environment["CHUNKS_TABLE"] == "unit-ChunksTable"
    assert worker.environment["TASK_QUEUE_URL"] == "http://aws/TaskQueue"
    assert worker.environment["STREAM_TOKEN_SECRET"] == "s" * 32
    api = tpl.functions()["ApiFunction"]
    assert api.environment["STREAM_BASE_URL"] == "http://stream/"
    # Lambda's rule: queue visibility timeout >= 6x the worker's timeout.
    assert queue["VisibilityTimeout"] >= 6 * worker.timeout


def test_a_parameter_without_value_fails_loudly() -> None:
    with pytest.raises(ValueError, match="StreamTokenSecret"):
        LocalTemplate.load("unit")
