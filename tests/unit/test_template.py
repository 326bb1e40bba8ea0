"""template.yaml: valid SAM, and the single source of every local name and setting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localcloud import samlocal
from localcloud.template import NO_VALUE, LocalTemplate

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def sam() -> str:
    try:
        return samlocal.sam()
    except samlocal.SamLocalError as e:
        pytest.fail(str(e))


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
    tpl = LocalTemplate.load("unit")
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    tpl.overrides["StreamTokenSecret.Ref"] = "arn:secret:token"

    queue = tpl.props("HighQueue")
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
    assert tpl.resolve(queue["RedrivePolicy"]["deadLetterTargetArn"]) == (
        "arn:aws:sqs:us-east-1:123456789012:unit-DeadLetterQueue"
    )
    chunks = tpl.props("ChunksTable")
    assert [k["AttributeName"] for k in chunks["KeySchema"]] == ["task_id", "seq"]

    sources = {esm.queue: esm for esm in tpl.event_sources()}
    assert set(sources) == {"HighQueue", "DefaultQueue", "LowQueue"}
    assert all(
        e.function == "WorkerFunction" and e.report_batch_item_failures for e in sources.values()
    )
    concurrency = [
        sources[q].maximum_concurrency or 0 for q in ("HighQueue", "DefaultQueue", "LowQueue")
    ]
    assert concurrency == sorted(concurrency, reverse=True)  # high gets the most

    worker = tpl.functions()["WorkerFunction"]
    assert worker.handler == "llmstream.worker.handler"
    assert worker.environment["CHUNKS_TABLE"] == "unit-ChunksTable"
    assert worker.environment["QUEUE_URL_LOW"] == "http://aws/LowQueue"
    assert worker.environment["STREAM_TOKEN_SECRET_ARN"] == "arn:secret:token"
    assert "STREAM_TOKEN_SECRET" not in worker.environment  # never a plain secret
    api = tpl.functions()["ApiFunction"]
    assert api.environment["STREAM_BASE_URL"] == "http://stream/"
    # Lambda's rule: queue visibility timeout >= 6x the worker's timeout.
    assert queue["VisibilityTimeout"] >= 6 * worker.timeout


def test_a_parameter_without_value_fails_loudly(tmp_path: Path) -> None:
    text = (
        (ROOT / "template.yaml")
        .read_text()
        .replace(
            '  AlarmEmail:\n    Type: String\n    Default: ""\n',
            "  AlarmEmail:\n    Type: String\n",
        )
    )
    assert text != (ROOT / "template.yaml").read_text()
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(ValueError, match="AlarmEmail"):
        LocalTemplate.load("unit", path=tmp_path / "t.yaml")


def test_worker_retry_budget_matches_the_queues_redrive_policy() -> None:
    from llmstream.settings import Settings

    tpl = LocalTemplate.load("unit")
    counts = {
        tpl.props(q)["RedrivePolicy"]["maxReceiveCount"]
        for q in ("HighQueue", "DefaultQueue", "LowQueue")
    }
    assert counts == {Settings.model_fields["max_receive_count"].default}


def test_the_default_chunk_log_is_dynamodb_with_no_cache_and_no_vpc() -> None:
    tpl = LocalTemplate.load("unit")
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    assert tpl.conditions["UseRedis"] is False
    assert not tpl.of_type("AWS::ElastiCache::ServerlessCache")
    assert not tpl.of_type("AWS::EC2::SecurityGroup")
    for spec in tpl.functions().values():
        assert spec.environment["CHUNKLOG_BACKEND"] == "dynamodb"
        assert spec.environment["REDIS_URL"] == ""
        assert tpl.resolve(tpl.props(spec.logical_id)["VpcConfig"]) is NO_VALUE


def test_the_redis_chunk_log_gets_a_tls_valkey_cache_that_only_the_functions_reach() -> None:
    tpl = LocalTemplate.load(
        "unit",
        parameters={
            "ChunkLogBackend": "redis",
            "RedisVpcId": "vpc-0123abcd",
            "RedisSubnetIds": "subnet-a,subnet-b",
        },
    )
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    tpl.overrides["ChunkCache.Endpoint.Address"] = "chunks.serverless.use1.cache.amazonaws.com"
    tpl.overrides["ChunkCache.Endpoint.Port"] = "6379"
    cache = tpl.props("ChunkCache")
    assert cache["Engine"] == "valkey"
    assert tpl.resolve(cache["SecurityGroupIds"]) == ["unit-ChunkCacheSecurityGroup"]
    ingress = tpl.props("ChunkCacheSecurityGroup")["SecurityGroupIngress"]
    assert [tpl.resolve(rule["SourceSecurityGroupId"]) for rule in ingress] == [
        "unit-FunctionSecurityGroup"
    ]
    for spec in tpl.functions().values():
        assert spec.environment["CHUNKLOG_BACKEND"] == "redis"
        assert spec.environment["REDIS_URL"] == (
            "rediss://chunks.serverless.use1.cache.amazonaws.com:6379/0"
        )
        vpc = tpl.resolve(tpl.props(spec.logical_id)["VpcConfig"])
        assert vpc["SecurityGroupIds"] == ["unit-FunctionSecurityGroup"]
        role = tpl.props(f"{spec.logical_id}Role")
        assert any("AWSLambdaVPCAccessExecutionRole" in arn for arn in role["ManagedPolicyArns"])


def test_the_dashboard_and_alarms_read_only_metrics_the_functions_emit() -> None:
    import json
    import re

    from llmstream.observe import METRICS

    tpl = LocalTemplate.load("unit")
    body = tpl.props("Dashboard")["DashboardBody"]["Fn::Sub"]
    # ${Resource.Attr} and ${AWS::Region} are CloudFormation's; the rest must be JSON
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    ours = [
        m[1]
        for w in widgets
        if w["type"] == "metric"
        for m in w["properties"]["metrics"]
        if isinstance(m[0], str) and m[0] == "llmstream"
    ]
    # every question of the README has its widgets: outcomes, the first token's wait split
    # three ways, the chunk log and the streams
    assert {"AnswersDone", "AnswersError", "QueueTime", "PipelineTimeToFirstToken"} <= set(ours)
    assert {"ModelTimeToFirstToken", "ChunkLogWriteLatency", "StreamsCutShort"} <= set(ours)
    assert set(ours) <= set(METRICS)
    # the alarms: error rate, time to first token p95, dead letters, all to the topic
    alarms = tpl.of_type("AWS::CloudWatch::Alarm")
    names: set[str] = set()
    for alarm in alarms.values():
        p = alarm["Properties"]
        assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        names.add(p.get("MetricName", ""))
        for q in p.get("Metrics", []):
            if "MetricStat" in q:
                metric = q["MetricStat"]["Metric"]
                assert metric["Namespace"] == "llmstream" and metric["MetricName"] in METRICS
                names.add(metric["MetricName"])
    assert {"AnswersError", "AnswersTimedOut", "TimeToFirstToken"} <= names
    assert "ApproximateNumberOfMessagesVisible" in names  # the dead-letter queue's depth


def test_every_metric_is_explained_in_the_readme() -> None:
    from llmstream.observe import METRICS

    readme = (ROOT / "README.md").read_text()
    assert [m for m in METRICS if f"`{m}`" not in readme] == []


def _functions(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    tpl = LocalTemplate.load("unit", parameters=parameters)
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    return {
        "specs": tpl.functions(),
        "architectures": {k: tpl.resolve(tpl.props(k)["Architectures"]) for k in tpl.functions()},
    }


def test_in_the_cloud_the_functions_are_arm64_with_no_endpoint_override() -> None:
    got = _functions()
    assert set(map(tuple, got["architectures"].values())) == {("arm64",)}
    for spec in got["specs"].values():
        assert "AWS_ENDPOINT_URL" not in spec.environment
    assert got["specs"]["WorkerFunction"].timeout == 300


def test_sam_local_gets_x86_64_a_declared_endpoint_and_a_shorter_worker_timeout() -> None:
    got = _functions(
        {
            "Architecture": "x86_64",
            "LocalEndpointUrl": "http://host.docker.internal:4566",
            "WorkerTimeout": "20",
        }
    )
    assert set(map(tuple, got["architectures"].values())) == {("x86_64",)}
    for spec in got["specs"].values():
        # SAM passes a function only the variables the template declares
        assert spec.environment["AWS_ENDPOINT_URL"] == "http://host.docker.internal:4566"
    assert got["specs"]["WorkerFunction"].timeout == 20


# ------------------------------------------------------------------ capacity
QUEUES = ("HighQueue", "DefaultQueue", "LowQueue")


def _poller_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, str]
) -> dict[str, int]:
    """The concurrency per queue that the local stack's worker poller is given."""
    import json
    from types import SimpleNamespace

    from localcloud import functions
    from localcloud.options import Options

    opts = Options(state_dir=tmp_path, workers=50, parameters=parameters)
    tpl = LocalTemplate.load("unit", parameters=parameters)
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    monkeypatch.setattr(functions, "environment", lambda stack, logical_id: {})
    functions.pollers(SimpleNamespace(template=tpl, opts=opts, urls={}))
    specs = json.loads((tmp_path / "poller-WorkerFunction.json").read_text())
    by_url = {s["queue_url"]: s["concurrency"] for s in specs}
    return {q: by_url[f"http://aws/{q}"] for q in QUEUES}


def test_each_queue_concurrency_is_a_parameter_that_reaches_the_local_pollers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tpl = LocalTemplate.load("unit")
    sources = {esm.queue: esm.maximum_concurrency for esm in tpl.event_sources()}
    assert sources == {"HighQueue": 20, "DefaultQueue": 10, "LowQueue": 3}  # as before
    for esm in tpl.of_type("AWS::Lambda::EventSourceMapping").values():
        cap = esm["Properties"]["ScalingConfig"]["MaximumConcurrency"]
        assert set(cap) == {"Ref"} and cap["Ref"] in tpl.parameters
    sized = {
        "HighQueueConcurrency": "7",
        "DefaultQueueConcurrency": "5",
        "LowQueueConcurrency": "2",
    }
    got = _poller_concurrency(tmp_path, monkeypatch, sized)
    assert got == {"HighQueue": 7, "DefaultQueue": 5, "LowQueue": 2}


def test_the_capacity_parameters_state_their_sizing_rule() -> None:
    from samtranslator.yaml_helper import yaml_parse

    declared = yaml_parse((ROOT / "template.yaml").read_text())["Parameters"]
    for name in ("HighQueueConcurrency", "DefaultQueueConcurrency", "LowQueueConcurrency"):
        text = " ".join(declared[name]["Description"].split())
        assert "sum of the three queue concurrencies" in text, name
    high = " ".join(declared["HighQueueConcurrency"]["Description"].split())
    assert "ModelRequestsPerMinute" in high and "ModelTokensPerMinute" in high
    assert "concurrency quota" in high
    assert "concurrency quota" in declared["ApiReservedConcurrency"]["Description"]


@pytest.mark.parametrize(("value", "reserved"), [("", NO_VALUE), ("0", NO_VALUE), ("25", "25")])
def test_the_api_reserves_concurrency_only_when_asked(value: str, reserved: Any) -> None:
    tpl = LocalTemplate.load("unit", parameters={"ApiReservedConcurrency": value})
    got = tpl.resolve(tpl.props("ApiFunction").get("ReservedConcurrentExecutions", NO_VALUE))
    assert got == reserved


def test_every_work_queue_has_a_backlog_alarm_on_the_alarm_topic() -> None:
    tpl = LocalTemplate.load("unit")
    watched = {}
    for alarm in tpl.of_type("AWS::CloudWatch::Alarm").values():
        p = alarm["Properties"]
        if p.get("MetricName") == "ApproximateAgeOfOldestMessage":
            assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}]
            assert p["Threshold"] == {"Ref": "QueueBacklogAlarmSeconds"}
            (dimension,) = p["Dimensions"]
            watched[dimension["Value"]["Fn::GetAtt"][0]] = p
    assert set(watched) == set(QUEUES)
    # a message being answered counts toward the age: the alarm waits longer than that
    assert int(tpl.parameters["QueueBacklogAlarmSeconds"]) > int(tpl.parameters["WorkerTimeout"])


# ------------------------------------------------------------------ least privilege
FUNCTIONS = ("ApiFunction", "WorkerFunction", "StreamFunction")
DATA_SERVICES = ("dynamodb:", "sqs:", "secretsmanager:")


def _statements(tpl: LocalTemplate, function: str) -> list[dict[str, Any]]:
    """The inline statements of the function's role, resolved (an If whose condition is
    false is gone), each with its actions and resources as lists."""
    out = []
    for policy in tpl.resolve(tpl.props(f"{function}Role").get("Policies", [])):
        for s in policy["PolicyDocument"]["Statement"]:
            actions, resources = s["Action"], s["Resource"]
            out.append(
                {
                    **s,
                    "Action": [actions] if isinstance(actions, str) else actions,
                    "Resource": [resources] if isinstance(resources, str) else resources,
                }
            )
    return out


def _granted(tpl: LocalTemplate, function: str) -> set[tuple[str, str]]:
    return {(a, r) for s in _statements(tpl, function) for a in s["Action"] for r in s["Resource"]}


@pytest.mark.parametrize("direct", ["true", "false"])
def test_no_function_may_scan_or_act_on_every_resource(direct: str) -> None:
    tpl = LocalTemplate.load("unit", parameters={"EnableDirectMode": direct})
    for function in FUNCTIONS:
        for s in _statements(tpl, function):
            assert s["Effect"] == "Allow"
            assert all(a.startswith(DATA_SERVICES) for a in s["Action"]), (function, s)
            assert not any("*" in a for a in s["Action"]), (function, s)  # no SendMessage*
            assert not any("*" in r for r in s["Resource"]), (function, s)  # no index/*
            assert "dynamodb:Scan" not in s["Action"], function
        # the SAM policy templates (CRUD, read) are gone: every permission is explicit
        assert not any("Template" in str(p) for p in tpl.props(f"{function}Role")["Policies"])


def test_the_worker_may_keep_its_message_invisible_while_it_answers() -> None:
    tpl = LocalTemplate.load("unit")
    granted = _granted(tpl, "WorkerFunction")
    for queue in QUEUES:
        arn = tpl.resolve({"Fn::GetAtt": [queue, "Arn"]})
        assert ("sqs:ChangeMessageVisibility", arn) in granted  # the heartbeat
        assert ("sqs:SendMessage", arn) in granted  # a rate-limited task, delayed


def test_the_worker_never_creates_requests_and_only_the_api_deletes_conversations() -> None:
    tpl = LocalTemplate.load("unit")
    table = {
        name: tpl.resolve({"Fn::GetAtt": [name, "Arn"]})
        for name in ("RequestsTable", "SessionsTable", "ChunksTable")
    }
    api, worker, stream = (_granted(tpl, f) for f in FUNCTIONS)
    assert ("dynamodb:DeleteItem", table["SessionsTable"]) in api
    assert ("dynamodb:BatchWriteItem", table["ChunksTable"]) in api
    for action, resource in worker:
        if resource in table.values():
            assert action not in ("dynamodb:DeleteItem", "dynamodb:BatchWriteItem")
    assert not any(resource == table["SessionsTable"] for _, resource in worker)
    assert ("dynamodb:PutItem", table["RequestsTable"]) not in worker
    # /v1 on the stream function accepts requests (a row, a session) and deletes one
    # response (its log, its tombstone), never a conversation.
    assert ("dynamodb:PutItem", table["RequestsTable"]) in stream
    assert ("dynamodb:DeleteItem", table["SessionsTable"]) not in stream
    assert ("dynamodb:DeleteItem", table["RequestsTable"]) not in stream


@pytest.mark.parametrize(("direct", "has_key"), [("true", True), ("false", False)])
def test_the_stream_function_reads_the_model_key_only_in_direct_mode(
    direct: str, has_key: bool
) -> None:
    tpl = LocalTemplate.load("unit", parameters={"EnableDirectMode": direct})
    key = tpl.resolve({"Ref": "OpenAIApiKeySecret"})
    token = tpl.resolve({"Ref": "StreamTokenSecret"})
    granted = _granted(tpl, "StreamFunction")
    assert (("secretsmanager:GetSecretValue", key) in granted) is has_key
    assert ("secretsmanager:GetSecretValue", token) in granted
    # The rate-limit table's writes stay either way: direct mode's quotas use them, and so
    # do the per-user stream leases, which hold with direct mode off.
    limits = tpl.resolve({"Fn::GetAtt": ["RateLimitTable", "Arn"]})
    for action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert (action, limits) in granted


class _RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("UpdateItem", kwargs))
        return {
            "Attributes": {
                "task_id": {"S": "t1"},
                "owner": {"S": "owner-1"},
                "status": {"S": "running"},
            }
        }


_EXPRESSION_WORDS = {"SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "IN", "BETWEEN"}


def _attributes_named(call: dict[str, Any]) -> set[str]:
    """Every top-level attribute a DynamoDB write names: its key, and the attributes of its
    update and condition expressions (placeholders resolved; values and functions not)."""
    import re

    names = set(call["Key"])
    aliases = call.get("ExpressionAttributeNames", {})
    for expression in (call.get("UpdateExpression", ""), call.get("ConditionExpression", "")):
        for token in re.findall(r"[#:]?[A-Za-z_][A-Za-z0-9_]*(?:\()?", expression):
            if token.startswith(":") or token.endswith("(") or token in _EXPRESSION_WORDS:
                continue
            names.add(aliases.get(token, token))
    return names


def test_the_stream_functions_cancels_fit_its_attribute_limited_permission() -> None:
    from llmstream.tasks import TaskStore

    tpl = LocalTemplate.load("unit")
    requests = tpl.resolve({"Fn::GetAtt": ["RequestsTable", "Arn"]})
    updates = [
        s
        for s in _statements(tpl, "StreamFunction")
        if "dynamodb:UpdateItem" in s["Action"] and requests in s["Resource"]
    ]
    (statement,) = updates
    assert statement.get("Condition"), "UpdateItem of any attribute of the requests table"
    allowed = set(statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"])

    client = _RecordingClient()
    store = TaskStore("requests", client, 3600)  # type: ignore[arg-type]
    store.cancel_on_disconnect("t1", "owner-1")
    store.request_cancel("t1", "owner-1")
    store.cancel_unstarted("t1")
    assert len(client.calls) == 3
    for action, call in client.calls:
        assert action == "UpdateItem"
        assert _attributes_named(call) <= allowed
    # a viewer that leaves writes the cancel flag alone, and reads nothing back
    first = client.calls[0][1]
    assert first["UpdateExpression"] == "SET cancel_requested = :true"
    assert first.get("ReturnValues", "NONE") == "NONE"


def test_api_keys_each_function_may_do_exactly_its_part() -> None:
    tpl = LocalTemplate.load("unit", parameters={"UserMaxApiKeys": "7"})
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    table = tpl.resolve({"Fn::GetAtt": ["ApiKeysTable", "Arn"]})
    index = f"{table}/index/by-owner"
    api, worker, stream = (_granted(tpl, f) for f in FUNCTIONS)
    # api: create, revoke, list (and count) by owner; never a read of a key's row by id
    assert {(a, r) for a, r in api if r in (table, index)} == {
        ("dynamodb:PutItem", table),
        ("dynamodb:DeleteItem", table),
        ("dynamodb:Query", index),
    }
    # stream: a key's row by id, and its last use; the worker: nothing
    assert {(a, r) for a, r in stream if r in (table, index)} == {
        ("dynamodb:GetItem", table),
        ("dynamodb:UpdateItem", table),
    }
    assert not any(r in (table, index) for _, r in worker)
    envs = {name: spec.environment for name, spec in tpl.functions().items()}
    assert envs["ApiFunction"]["API_KEYS_TABLE"] == "unit-ApiKeysTable"
    assert envs["StreamFunction"]["API_KEYS_TABLE"] == "unit-ApiKeysTable"
    assert envs["ApiFunction"]["USER_MAX_API_KEYS"] == "7"
    assert "API_KEYS_TABLE" not in envs["WorkerFunction"]


def test_the_keys_table_is_kept_like_the_others_and_its_index_holds_no_hash() -> None:
    from llmstream.api_keys import OWNER_INDEX

    tpl = LocalTemplate.load("unit")
    props = tpl.props("ApiKeysTable")
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["key_id"]
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == OWNER_INDEX
    assert [k["AttributeName"] for k in gsi["KeySchema"]] == ["owner", "created_at"]
    assert set(gsi["Projection"]["NonKeyAttributes"]) == {"name", "prefix", "last_used_at"}


class _KeysTable(_RecordingClient):
    """The keys table's row of one key, as the stream function's GetItem reads it."""

    def __init__(self, key: str) -> None:
        from llmstream.api_keys import key_hash, key_id_of

        super().__init__()
        self.item = {
            "key_id": {"S": key_id_of(key)},
            "owner": {"S": "owner-1"},
            "username": {"S": "alice"},
            "key_hash": {"S": key_hash(key)},
            "created_at": {"N": "1.0"},
        }

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("GetItem", kwargs))
        return {"Item": self.item}


def test_the_stream_functions_last_used_write_fits_its_attribute_limited_permission() -> None:
    from llmstream.api_keys import ApiKeyVerifier, new_key

    tpl = LocalTemplate.load("unit")
    table = tpl.resolve({"Fn::GetAtt": ["ApiKeysTable", "Arn"]})
    (statement,) = [
        s
        for s in _statements(tpl, "StreamFunction")
        if "dynamodb:UpdateItem" in s["Action"] and table in s["Resource"]
    ]
    allowed = set(statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"])
    returns = set(statement["Condition"]["StringEqualsIfExists"]["dynamodb:ReturnValues"])
    assert allowed == {"key_id", "last_used_at"} and returns == {"NONE"}

    _, key = new_key()
    client = _KeysTable(key)
    assert ApiKeyVerifier("keys", lambda: client).verify(key).sub == "owner-1"  # type: ignore[arg-type,return-value]
    (_, (action, call)) = client.calls
    assert action == "UpdateItem"
    assert _attributes_named(call) <= allowed
    assert call.get("ReturnValues", "NONE") in returns


# ------------------------------------------------------------------ the page's headers
def _page_headers() -> tuple[LocalTemplate, dict[str, Any]]:
    tpl = LocalTemplate.load("unit", region="eu-west-1")
    tpl.overrides["HttpApi.Ref"] = "a1b2c3"
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "https://s7r.lambda-url.eu-west-1.on.aws/"
    behaviour = tpl.props("FrontendDistribution")["DistributionConfig"]["DefaultCacheBehavior"]
    assert behaviour["ResponseHeadersPolicyId"] == {"Ref": "FrontendHeadersPolicy"}
    config = tpl.resolve(tpl.props("FrontendHeadersPolicy"))["ResponseHeadersPolicyConfig"]
    return tpl, config["SecurityHeadersConfig"]


def test_the_page_may_run_only_its_own_files_and_talk_only_to_its_services() -> None:
    _, headers = _page_headers()
    assert headers["ContentSecurityPolicy"]["Override"] is True
    csp = {
        name: sources
        for name, *sources in (
            d.split() for d in headers["ContentSecurityPolicy"]["ContentSecurityPolicy"].split(";")
        )
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == [
        "'self'",  # config.json
        "https://a1b2c3.execute-api.eu-west-1.amazonaws.com",  # the HTTP API
        "https://s7r.lambda-url.eu-west-1.on.aws/",  # EventSource and POST /direct
        "https://cognito-idp.eu-west-1.amazonaws.com",  # sign-in
    ]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert headers["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 31536000
    assert headers["ContentTypeOptions"]["Override"] is True
    assert headers["FrameOptions"]["FrameOption"] == "DENY"
    assert headers["ReferrerPolicy"]["ReferrerPolicy"] == "strict-origin-when-cross-origin"


def test_the_page_has_no_inline_script_or_style_for_its_policy_to_block() -> None:
    import re

    for page in (ROOT / "frontend").glob("*.html"):
        html = page.read_text()
        for script in re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S):
            assert "src=" in script[0] and not script[1].strip(), page.name
        assert "<style" not in html and not re.search(r"\sstyle=", html), page.name
        assert not re.search(r"\son[a-z]+=", html), page.name  # inline event handlers
        assert "javascript:" not in html, page.name
    for script in (ROOT / "frontend").glob("*.js"):
        code = script.read_text()
        # inline styles, HTML from strings and eval are what 'self' alone would refuse
        for refused in (".style.", "cssText", "innerHTML", "insertAdjacentHTML", "eval("):
            assert refused not in code, (script.name, refused)
        assert not re.search(r"new Function\(|setTimeout\(\s*[\"'`]", code), script.name


def test_the_local_page_gets_the_templates_policy_with_the_local_endpoints() -> None:
    from localcloud.page import content_security_policy

    tpl, headers = _page_headers()
    cloud = headers["ContentSecurityPolicy"]["ContentSecurityPolicy"]
    local = content_security_policy(tpl, ["http://127.0.0.1:8007", "http://127.0.0.1:8008"])
    assert local == cloud.replace(
        "https://a1b2c3.execute-api.eu-west-1.amazonaws.com "
        "https://s7r.lambda-url.eu-west-1.on.aws/ "
        "https://cognito-idp.eu-west-1.amazonaws.com",
        "http://127.0.0.1:8007 http://127.0.0.1:8008",
    )


@pytest.mark.parametrize(
    ("value", "reserved"), [(None, NO_VALUE), ("50", "50"), ("0", NO_VALUE), ("", NO_VALUE)]
)
def test_the_stream_function_reserves_its_concurrency_when_told_to(
    value: str | None, reserved: Any
) -> None:
    tpl = LocalTemplate.load(
        "unit", parameters={} if value is None else {"StreamReservedConcurrency": value}
    )
    got = tpl.resolve(tpl.props("StreamFunction").get("ReservedConcurrentExecutions", NO_VALUE))
    assert got == reserved
    # AND the worker reserves none: it shares what the stream (and the api) leave
    assert "ReservedConcurrentExecutions" not in tpl.props("WorkerFunction")
    from samtranslator.yaml_helper import yaml_parse

    declared = yaml_parse((ROOT / "template.yaml").read_text())["Parameters"]
    assert "concurrency quota" in declared["StreamReservedConcurrency"]["Description"]


def test_the_stream_function_gets_the_cap_on_open_streams_and_exactly_its_table_actions() -> None:
    tpl = LocalTemplate.load("unit", parameters={"UserMaxStreams": "4"})
    tpl.queue_urls = {q: f"http://aws/{q}" for q in tpl.of_type("AWS::SQS::Queue")}
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = "http://stream/"
    assert tpl.functions()["StreamFunction"].environment["USER_MAX_STREAMS"] == "4"
    table = tpl.resolve({"Fn::GetAtt": ["RateLimitTable", "Arn"]})
    actions: set[str] = set()
    for policy in tpl.props("StreamFunctionRole")["Policies"]:
        for statement in tpl.resolve(policy["PolicyDocument"])["Statement"]:
            resources = statement["Resource"]
            if table in (resources if isinstance(resources, list) else [resources]):
                acts = statement["Action"]
                actions |= set(acts if isinstance(acts, list) else [acts])
    # Quotas of direct mode (read, conditional write, add) and the leases (put, renew, delete)
    assert actions == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
