"""Create the template's data-plane resources on the AWS endpoint: queues (with their
redrive policy), tables (keys, indexes, TTL), buckets, secrets and the user pool (its app
client and groups). Idempotent: what exists stays."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from botocore.exceptions import ClientError

from localcloud.aws import Aws
from localcloud.options import Options
from localcloud.template import LocalTemplate
from localcloud.users import UserPool

log = logging.getLogger(__name__)

# CloudFormation property -> SQS attribute, for the attributes CreateQueue takes.
_QUEUE_ATTRIBUTES = {
    "DelaySeconds": "DelaySeconds",
    "MaximumMessageSize": "MaximumMessageSize",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout": "VisibilityTimeout",
    "FifoQueue": "FifoQueue",
    "ContentBasedDeduplication": "ContentBasedDeduplication",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
}


def provision_stack(opts: Options, aws: Aws) -> tuple[LocalTemplate, UserPool, str]:
    """A stack's template, as the local stack runs it, provisioned on ``aws``: the template,
    its user pool, and a line counting what was created."""
    tpl = LocalTemplate.load(
        opts.stack,
        # Locally the page runs on another port, and direct mode is on (it is off by
        # default in the cloud, where the stream URL is public).
        parameters={"AllowedOrigin": "*", "EnableDirectMode": "true", **opts.parameters},
        region=aws.region,
    )
    stream_url = f"http://{opts.host}:{opts.ports.stream}/"
    tpl.overrides["StreamFunctionUrl.FunctionUrl"] = stream_url
    tpl.account = aws.account
    clients = {
        name.replace("-idp", ""): aws.client(name)
        for name in ("sqs", "dynamodb", "s3", "secretsmanager", "cognito-idp")
    }
    provision(tpl, **clients)
    pool = UserPool(
        cognito=clients["cognito"],
        pool_id=tpl.overrides["UserPool.Ref"],
        client_id=tpl.overrides["UserPoolClient.Ref"],
        passwords_file=opts.dir / "users.json",
    )
    counts = {
        kind: len(tpl.of_type(f"AWS::{kind}"))
        for kind in ("SQS::Queue", "DynamoDB::Table", "S3::Bucket")
    }
    detail = ", ".join(f"{n} {k.split('::')[1].lower()}(s)" for k, n in counts.items())
    return tpl, pool, detail


def provision(
    tpl: LocalTemplate,
    *,
    sqs: Any,
    dynamodb: Any,
    s3: Any,
    secretsmanager: Any,
    cognito: Any,
) -> None:
    _user_pools(tpl, cognito)  # first: the tables' and functions' values name the pool
    _queues(tpl, sqs)
    _tables(tpl, dynamodb)
    _buckets(tpl, s3)
    _secrets(tpl, secretsmanager)


# CloudFormation property -> CreateUserPool / CreateUserPoolClient parameter, where they differ.
_POOL_PROPS = ("Policies", "AdminCreateUserConfig", "UsernameConfiguration", "MfaConfiguration")
_CLIENT_PROPS = (
    "ExplicitAuthFlows",
    "GenerateSecret",
    "PreventUserExistenceErrors",
    "EnableTokenRevocation",
    "AccessTokenValidity",
    "IdTokenValidity",
    "RefreshTokenValidity",
    "TokenValidityUnits",
)


def _user_pools(tpl: LocalTemplate, cognito: Any) -> None:
    """The user pool, its app clients and groups, found by name if they exist (a pool id
    is the endpoint's to choose, so the template's Refs to them are overrides)."""
    for logical_id in tpl.of_type("AWS::Cognito::UserPool"):
        props = tpl.resolve(tpl.props(logical_id))
        name = props.get("UserPoolName") or tpl.physical_name(logical_id)
        pools = cognito.list_user_pools(MaxResults=60)["UserPools"]
        pool_id = next((p["Id"] for p in pools if p["Name"] == name), None)
        if pool_id is None:
            request = {k: props[k] for k in _POOL_PROPS if k in props}
            pool_id = cognito.create_user_pool(PoolName=name, **request)["UserPool"]["Id"]
        tpl.overrides[f"{logical_id}.Ref"] = pool_id
        tpl.overrides[f"{logical_id}.Arn"] = (
            f"arn:aws:cognito-idp:{tpl.region}:{tpl.account}:userpool/{pool_id}"
        )
        tpl.overrides[f"{logical_id}.ProviderURL"] = (
            f"cognito-idp.{tpl.region}.amazonaws.com/{pool_id}"
        )
        log.info("user pool %s -> %s", logical_id, pool_id)
    for logical_id in tpl.of_type("AWS::Cognito::UserPoolClient"):
        props = tpl.resolve(tpl.props(logical_id))
        pool_id = props["UserPoolId"]
        name = props.get("ClientName") or tpl.physical_name(logical_id)
        clients = cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)
        client_id = next(
            (c["ClientId"] for c in clients["UserPoolClients"] if c["ClientName"] == name), None
        )
        if client_id is None:
            request = {k: props[k] for k in _CLIENT_PROPS if k in props}
            client_id = cognito.create_user_pool_client(
                UserPoolId=pool_id, ClientName=name, **request
            )["UserPoolClient"]["ClientId"]
        tpl.overrides[f"{logical_id}.Ref"] = client_id
        log.info("user pool client %s -> %s", logical_id, client_id)
    for logical_id in tpl.of_type("AWS::Cognito::UserPoolGroup"):
        props = tpl.resolve(tpl.props(logical_id))
        try:
            cognito.create_group(
                UserPoolId=props["UserPoolId"],
                GroupName=props["GroupName"],
                Description=props.get("Description", ""),
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "GroupExistsException":
                raise
        tpl.overrides[f"{logical_id}.Ref"] = props["GroupName"]


def _secrets(tpl: LocalTemplate, secretsmanager: Any) -> None:
    """Secrets with the value the template gives, or a generated one (GenerateSecretString).
    A secret that exists keeps its value, as a stack update would."""
    for logical_id in tpl.of_type("AWS::SecretsManager::Secret"):
        props = tpl.resolve(tpl.props(logical_id))
        name = tpl.physical_name(logical_id)
        try:
            arn = secretsmanager.describe_secret(SecretId=name)["ARN"]
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            generate = props.get("GenerateSecretString", {})
            value = (
                props.get("SecretString")
                or secrets.token_urlsafe(int(generate.get("PasswordLength", 32)))[
                    : int(generate.get("PasswordLength", 32))
                ]
            )
            arn = secretsmanager.create_secret(Name=name, SecretString=value)["ARN"]
        # Ref of a secret is its ARN, which only the endpoint knows (it ends in a suffix).
        tpl.overrides[f"{logical_id}.Ref"] = arn
        log.info("secret %s -> %s", logical_id, arn)


def _queues(tpl: LocalTemplate, sqs: Any) -> None:
    queues = tpl.of_type("AWS::SQS::Queue")
    # Create every queue first, then set redrive policies: a policy names its DLQ's ARN.
    for logical_id in queues:
        props = tpl.props(logical_id)
        attributes = {
            attr: _str(tpl.resolve(props[prop]))
            for prop, attr in _QUEUE_ATTRIBUTES.items()
            if prop in props
        }
        name = tpl.physical_name(logical_id)
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        tpl.queue_urls[logical_id] = url
        log.info("queue %s -> %s", logical_id, url)
    for logical_id in queues:
        props = tpl.props(logical_id)
        if "RedrivePolicy" in props:
            policy = tpl.resolve(props["RedrivePolicy"])
            sqs.set_queue_attributes(
                QueueUrl=tpl.queue_urls[logical_id],
                Attributes={"RedrivePolicy": json.dumps(policy)},
            )


def _tables(tpl: LocalTemplate, dynamodb: Any) -> None:
    for logical_id in tpl.of_type("AWS::DynamoDB::Table"):
        props = tpl.resolve(tpl.props(logical_id))
        name = tpl.physical_name(logical_id)
        request: dict[str, Any] = {
            "TableName": name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        if request["BillingMode"] == "PROVISIONED":
            request["ProvisionedThroughput"] = props["ProvisionedThroughput"]
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if key in props:
                request[key] = props[key]
        if "StreamSpecification" in props:
            request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        try:
            dynamodb.create_table(**request)
            dynamodb.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceInUseException":
                raise
        ttl = props.get("TimeToLiveSpecification")
        current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl and ttl.get("Enabled") and current.get("TimeToLiveStatus") != "ENABLED":
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
        log.info("table %s -> %s", logical_id, name)


def _buckets(tpl: LocalTemplate, s3: Any) -> None:
    for logical_id in tpl.of_type("AWS::S3::Bucket"):
        name = tpl.physical_name(logical_id)
        kwargs: dict[str, Any] = {"Bucket": name}
        if tpl.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": tpl.region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as e:
            if e.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        log.info("bucket %s -> %s", logical_id, name)


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
