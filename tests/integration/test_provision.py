"""Provisioning from template.yaml onto the emulator, over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcloud.provision import provision
from localcloud.template import LocalTemplate

pytestmark = pytest.mark.integration


def test_queues_tables_and_bucket_exist_as_the_template_says(
    stack: LocalTemplate, clients: dict[str, Any]
) -> None:
    sqs, ddb, s3 = clients["sqs"], clients["dynamodb"], clients["s3"]
    attrs = sqs.get_queue_attributes(QueueUrl=stack.queue_url("HighQueue"), AttributeNames=["All"])[
        "Attributes"
    ]
    template_queue = stack.props("HighQueue")
    assert int(attrs["VisibilityTimeout"]) == template_queue["VisibilityTimeout"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == template_queue["RedrivePolicy"]["maxReceiveCount"]
    assert redrive["deadLetterTargetArn"].endswith(f"{stack.stack}-DeadLetterQueue")

    for logical in ("RequestsTable", "ChunksTable"):
        name = stack.physical_name(logical)
        table = ddb.describe_table(TableName=name)["Table"]
        assert table["KeySchema"] == stack.props(logical)["KeySchema"]
        ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"
        assert ttl["AttributeName"] == "expires_at"

    # The keys table and its index, with no TTL (keys live until revoked)
    keys = ddb.describe_table(TableName=stack.physical_name("ApiKeysTable"))["Table"]
    assert keys["KeySchema"] == stack.props("ApiKeysTable")["KeySchema"]
    (index,) = keys["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "by-owner"
    assert (
        index["KeySchema"] == stack.props("ApiKeysTable")["GlobalSecondaryIndexes"][0]["KeySchema"]
    )
    assert stack.functions()["StreamFunction"].environment["API_KEYS_TABLE"] == keys["TableName"]

    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert stack.physical_name("FrontendBucket") in buckets

    # Secrets exist with a generated value of the template's length; Ref is their ARN.
    sm = clients["secretsmanager"]
    token_arn = stack.resolve({"Ref": "StreamTokenSecret"})
    value = sm.get_secret_value(SecretId=token_arn)["SecretString"]
    length = stack.props("StreamTokenSecret")["GenerateSecretString"]["PasswordLength"]
    assert len(value) == length


def test_provisioning_twice_changes_nothing(stack: LocalTemplate, clients: dict[str, Any]) -> None:
    again = LocalTemplate.load(stack.stack)
    provision(again, **clients)
    assert again.queue_urls == stack.queue_urls
    assert again.resolve({"Ref": "StreamTokenSecret"}) == stack.resolve(
        {"Ref": "StreamTokenSecret"}
    )
