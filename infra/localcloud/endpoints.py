"""Which endpoint each AWS service is on, exactly as boto3 decides it.

boto3 (botocore's configured-endpoint chain) takes `AWS_ENDPOINT_URL_<SERVICE>` over
`AWS_ENDPOINT_URL`, both ignored when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true. The
functions' own clients get that for free from their environment; the tools that build
clients for a stack (provisioning, `token`, `dlq`, the tests) ask here, with the stack's
environment, so a tool never sends a service somewhere its functions do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.configprovider import ConfiguredEndpointProvider

# The services the stack uses: the data plane, sign-in, and STS for the account id.
SERVICES = ("sqs", "dynamodb", "s3", "secretsmanager", "cognito-idp", "sts")


def _provider(service: str, env: Mapping[str, str]) -> ConfiguredEndpointProvider:
    return ConfiguredEndpointProvider(
        full_config={}, scoped_config={}, client_name=service, environ=dict(env)
    )


def env_var(service: str) -> str:
    """The service's own endpoint variable, e.g. AWS_ENDPOINT_URL_SECRETS_MANAGER."""
    name: str = _provider(service, {})._get_service_env_var_name()
    return name


def endpoint(service: str, env: Mapping[str, str]) -> str | None:
    """Where boto3 would send ``service`` with environment ``env`` (None: AWS itself)."""
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    url: str | None = _provider(service, env).provide()
    return url


def configured(env: Mapping[str, str]) -> bool:
    """Whether ``env`` sends any service somewhere other than AWS."""
    return any(endpoint(s, env) for s in SERVICES)


def client(service: str, env: Mapping[str, str], config: Config | None = None) -> Any:
    """A boto3 client for ``service`` as a function running with ``env`` would build it."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    url = endpoint(service, env)
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if url and not key and not env.get("AWS_PROFILE"):
        key, secret = "test", "test"  # an emulator takes any credentials
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        config=config,
    )


def public(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without credentials: what may be written to a state file or printed."""
    return {
        k: v
        for k, v in env.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }


def account_id(env: Mapping[str, str]) -> str:
    """The account the endpoint says these credentials belong to (STS GetCallerIdentity):
    123456789012 on moto, 000000000000 on LocalStack, the real one on AWS."""
    got: str = client("sts", env).get_caller_identity()["Account"]
    return got
