"""The deploy's publish step (`./run.sh deploy` after `sam deploy`), against the emulator:
stack outputs from CloudFormation, the frontend synced to S3 with the right content types and
cache headers, config.json written from the outputs, a CloudFront invalidation, and the
OpenAI key stored in its secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmstream_deploy.publish import StackOutputs
from localcloud.template import LocalTemplate
from tests.conftest import ROOT, unique
from tests.integration.conftest import aws_client

pytestmark = pytest.mark.integration


def distribution(cloudfront: Any, bucket: str) -> str:
    origin = f"{bucket}.s3.us-east-1.amazonaws.com"
    config = {
        "CallerReference": unique("ref"),
        "Comment": "test",
        "Enabled": True,
        "Origins": {
            "Quantity": 1,
            "Items": [
                {"Id": "o", "DomainName": origin, "S3OriginConfig": {"OriginAccessIdentity": ""}}
            ],
        },
        "DefaultCacheBehavior": {
            "TargetOriginId": "o",
            "ViewerProtocolPolicy": "redirect-to-https",
            "CachePolicyId": "658327ea-f89d-4fab-a63d-7e88639e58f6",
        },
    }
    return str(cloudfront.create_distribution(DistributionConfig=config)["Distribution"]["Id"])


def test_publish_syncs_the_frontend_and_writes_config(
    stack: LocalTemplate, clients: dict[str, Any], aws_endpoint: str, tmp_path: Path
) -> None:
    cfn = aws_client(aws_endpoint, "cloudformation")
    cloudfront = aws_client(aws_endpoint, "cloudfront")
    s3, sm = clients["s3"], clients["secretsmanager"]
    bucket = stack.physical_name("FrontendBucket")
    # GIVEN a deployed stack's outputs and a bucket holding a stale file from an older deploy
    s3.put_object(Bucket=bucket, Key="old.js", Body=b"stale")
    secret_arn = stack.resolve({"Ref": "OpenAIApiKeySecret"})
    outputs = {
        "ApiUrl": "https://api.example/",
        "StreamUrl": "https://stream.example/",
        "FrontendBucketName": bucket,
        "FrontendDistributionId": distribution(cloudfront, bucket),
        "FrontendUrl": "https://d.example",
        "OpenAIApiKeySecretArn": secret_arn,
        "UserPoolId": "us-east-1_Abc123",
        "UserPoolClientId": "client123",
    }
    name = unique("deployed")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(
            {
                "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {k: {"Value": v} for k, v in outputs.items()},
            }
        ),
    )
    # WHEN the publish step runs, as `./run.sh deploy` runs it
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "OPENAI_API_KEY": "sk-from-deployer",
    }
    result = subprocess.run(
        [sys.executable, "-m", "llmstream_deploy", "publish", "--stack", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "invalidation" in result.stderr + result.stdout
    # THEN every frontend file is there with its content type and cache policy
    local = sorted(
        p.relative_to(ROOT / "frontend").as_posix()
        for p in (ROOT / "frontend").rglob("*")
        if p.is_file() and p.name != "config.json"
    )
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted([*local, "config.json"])  # old.js removed
    expected_types = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
    }
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == expected_types[Path(key).suffix], key
        html_or_json = key.endswith((".html", ".json"))
        assert head["CacheControl"] == ("no-cache" if html_or_json else "public, max-age=3600")
    # AND config.json points the page at the stack's API and stream, and at its user pool's
    # app client through Cognito's endpoint in the stack's region
    config = json.loads(s3.get_object(Bucket=bucket, Key="config.json")["Body"].read())
    assert config == {
        "apiUrl": "https://api.example",
        "streamUrl": "https://stream.example",
        "auth": {
            "region": "us-east-1",
            "userPoolId": "us-east-1_Abc123",
            "clientId": "client123",
            "endpoint": "https://cognito-idp.us-east-1.amazonaws.com/",
        },
    }
    # AND the edge caches were told to drop the old files
    invalidations = cloudfront.list_invalidations(DistributionId=outputs["FrontendDistributionId"])
    assert invalidations["InvalidationList"]["Quantity"] == 1
    # AND the OpenAI key is in its secret
    assert sm.get_secret_value(SecretId=secret_arn)["SecretString"] == "sk-from-deployer"


def test_config_signs_in_through_the_stacks_user_pool_if_it_has_one() -> None:
    outputs = {"ApiUrl": "https://a/", "StreamUrl": "https://s", "FrontendBucketName": "b"}
    pool = {**outputs, "UserPoolId": "eu-west-1_X", "UserPoolClientId": "c"}
    assert StackOutputs.of(pool, region="eu-west-1").config()["auth"] == {
        "region": "eu-west-1",
        "userPoolId": "eu-west-1_X",
        "clientId": "c",
        "endpoint": "https://cognito-idp.eu-west-1.amazonaws.com/",
    }
    # A stack that trusts another issuer (AuthIssuer) has no pool, and the page no sign-in
    assert StackOutputs.of(outputs, region="eu-west-1").config() == {
        "apiUrl": "https://a",
        "streamUrl": "https://s",
    }
