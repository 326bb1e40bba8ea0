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


PAGE = "https://d111abcdef8.cloudfront.net"


def deployed(cfn: Any, **parameters: str) -> str:
    """A stack as `sam deploy` leaves it: AllowedOrigin (``*`` unless given), another
    parameter of the deployer's, and its chat page's URL."""
    name = unique("origin")
    template = {
        "Parameters": {
            "AllowedOrigin": {"Type": "String", "Default": "*"},
            "Stage": {"Type": "String", "Default": "dev"},
        },
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {"FrontendUrl": {"Value": PAGE}},
    }
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    return name


def parameters(cfn: Any, stack: str) -> dict[str, str]:
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}


def allow_origin(
    aws_endpoint: str, stack: str, samconfig: Path, *sam_args: str
) -> subprocess.CompletedProcess[str]:
    """The deploy's last step, as `./run.sh deploy` runs it after publish."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    argv = ["origin", "--stack", stack, "--samconfig", str(samconfig), "--", *sam_args]
    result = subprocess.run(
        [sys.executable, "-m", "llmstream_deploy", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_after_the_first_deploy_the_stack_allows_its_pages_origin_alone(
    aws_endpoint: str, tmp_path: Path
) -> None:
    cfn = aws_client(aws_endpoint, "cloudformation")
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(
        '[default.deploy.parameters]\nparameter_overrides = "Stage=prod"\n', encoding="utf-8"
    )
    # GIVEN a first deploy: AllowedOrigin at the template's *, the page now at its URL
    stack = deployed(cfn, Stage="prod")
    assert parameters(cfn, stack)["AllowedOrigin"] == "*"
    # WHEN the deploy's origin step runs
    allow_origin(aws_endpoint, stack, samconfig)
    # THEN the stack allows the page's origin alone, and its other parameters are as they were
    assert parameters(cfn, stack) == {"AllowedOrigin": PAGE, "Stage": "prod"}
    # AND the next deploy changes nothing (sam deploy keeps the value it is not given)
    again = allow_origin(aws_endpoint, stack, samconfig)
    assert "already the page's origin" in again.stderr
    assert parameters(cfn, stack) == {"AllowedOrigin": PAGE, "Stage": "prod"}


@pytest.mark.parametrize("where", ["samconfig", "command line"])
def test_an_origin_the_deployer_names_is_left_alone(
    aws_endpoint: str, tmp_path: Path, where: str
) -> None:
    cfn = aws_client(aws_endpoint, "cloudformation")
    samconfig = tmp_path / "samconfig.toml"
    overrides = "Stage=prod AllowedOrigin=*"
    # GIVEN a deploy that names AllowedOrigin, * included (for trying things out)
    if where == "samconfig":
        samconfig.write_text(
            f'[default.deploy.parameters]\nparameter_overrides = "{overrides}"\n', encoding="utf-8"
        )
        sam_args: tuple[str, ...] = ()
    else:
        sam_args = ("--parameter-overrides", overrides)
    stack = deployed(cfn, Stage="prod", AllowedOrigin="*")
    # WHEN the origin step runs after it
    result = allow_origin(aws_endpoint, stack, samconfig, *sam_args)
    # THEN the origin stays the deployer's
    assert "named by the deploy's parameters" in result.stderr
    assert parameters(cfn, stack) == {"AllowedOrigin": "*", "Stage": "prod"}
