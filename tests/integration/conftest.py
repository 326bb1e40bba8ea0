from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from openai import OpenAI

from llmstream.deps import Deps, build_deps
from llmstream.settings import Settings
from llmstream.tasks import Task
from localcloud.poller import sqs_record
from localcloud.provision import provision
from localcloud.template import LocalTemplate
from localcloud.users import LocalUser, UserPool
from tests.conftest import ARTIFACTS, unique


def aws_client(endpoint: str, name: str) -> Any:
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="session")
def clients(aws_endpoint: str) -> dict[str, Any]:
    return {
        name.replace("-idp", ""): aws_client(aws_endpoint, name)
        for name in ("sqs", "dynamodb", "s3", "secretsmanager", "cognito-idp")
    }


@pytest.fixture(scope="session")
def stack(clients: dict[str, Any]) -> LocalTemplate:
    """The template's resources, provisioned under a unique stack name."""
    tpl = LocalTemplate.load(unique("it"))
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream.invalid/"
    provision(tpl, **clients)
    return tpl


@pytest.fixture(scope="session")
def settings(stack: LocalTemplate) -> Settings:
    env = stack.functions()["WorkerFunction"].environment
    values = {k.lower(): v for k, v in env.items()}
    # Core tests take a plain key; the Secrets Manager path runs in the handler and e2e tests.
    values.pop("stream_token_secret_arn")
    values.pop("openai_api_key_secret_arn")
    values.pop("auth_jwks_url")
    return Settings(**values, stream_token_secret="s" * 40)


@pytest.fixture
def deps(settings: Settings, clients: dict[str, Any], fake_openai_url: str) -> Deps:
    openai = OpenAI(base_url=fake_openai_url, api_key="sk-test", max_retries=0)
    return build_deps(settings, dynamodb=clients["dynamodb"], sqs=clients["sqs"], openai=openai)


@pytest.fixture(scope="session")
def pool(stack: LocalTemplate, clients: dict[str, Any]) -> UserPool:
    """The template's user pool on the emulator."""
    return UserPool(
        cognito=clients["cognito"],
        pool_id=stack.overrides["UserPool.Ref"],
        client_id=stack.overrides["UserPoolClient.Ref"],
        passwords_file=ARTIFACTS / f"{stack.stack}-users.json",
    )


@pytest.fixture(scope="session")
def alice(pool: UserPool) -> LocalUser:
    return pool.ensure_user("alice")


def function_env(stack: LocalTemplate, logical_id: str, aws_endpoint: str) -> dict[str, str]:
    """A function's environment as the local stack gives it (the emulator's JWKS URL)."""
    return {
        **stack.functions()[logical_id].environment,
        "AUTH_JWKS_URL": (
            f"{aws_endpoint}/{stack.overrides['UserPool.Ref']}/.well-known/jwks.json"
        ),
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def queued_task(
    deps: Deps,
    *,
    session_id: str | None = None,
    model: str = "m",
    message: str = "hi",
    **fields: Any,
) -> Task:
    """A queued task in the store, as POST /chat leaves one before it sends the message: a
    new task id, and a new session unless ``session_id`` is given."""
    task = Task(
        task_id=uuid.uuid4().hex,
        session_id=session_id or uuid.uuid4().hex,
        status="queued",
        model=model,
        message=message,
        **fields,
    )
    deps.tasks.create(task)
    return task


def received_event(stack: LocalTemplate, sqs: Any, queue: str, task_id: str) -> dict[str, Any]:
    """The worker's Lambda event for a task: its message sent to the template's queue
    ``queue`` (a logical id) and received as the event source mapping receives it."""
    url = stack.queue_url(queue)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"task_id": task_id}))
    [message] = sqs.receive_message(
        QueueUrl=url, WaitTimeSeconds=2, MessageSystemAttributeNames=["All"]
    )["Messages"]
    arn = stack.resolve({"Fn::GetAtt": [queue, "Arn"]})
    return {"Records": [sqs_record(message, arn, "us-east-1")]}
