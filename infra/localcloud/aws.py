"""Where a local stack's AWS services run, by ``--aws`` target: which emulators it starts
(moto; moto with DynamoDB Local; LocalStack with DynamoDB Local and sign-in on moto) or
which endpoints it is given (external), the environment its functions and tools reach them
with, and the account id they answer with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from localcloud import TARGETS, emulators, endpoints
from localcloud.options import Options, StartError
from localcloud.supervisor import Component, Supervisor

_CREDENTIALS = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def choose_target(aws: str) -> str:
    """ "auto": external when the standard endpoint variables name one, else moto."""
    if aws == "auto":
        return "external" if endpoints.configured(os.environ) else "moto"
    if aws not in TARGETS:
        raise StartError(f"unknown AWS target {aws!r}: {', '.join(TARGETS)}")
    return aws


@dataclass
class Aws:
    """A stack's AWS services once they answer."""

    target: str
    env: dict[str, str]  # region, credentials and endpoint variables, as boto3 reads them
    account: str

    @property
    def endpoints(self) -> dict[str, str | None]:
        return {s: endpoints.endpoint(s, self.env) for s in endpoints.SERVICES}

    @property
    def region(self) -> str:
        return self.env["AWS_DEFAULT_REGION"]

    @property
    def url(self) -> str:
        return self.endpoints["sqs"] or f"https://sqs.{self.region}.amazonaws.com"

    @property
    def cognito_url(self) -> str:
        url = self.endpoints.get("cognito-idp") or (
            f"https://cognito-idp.{self.region}.amazonaws.com"
        )
        return url.rstrip("/")

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on these endpoints, as the functions have."""
        return endpoints.client(service, self.env)


def ports(target: str, opts: Options) -> dict[str, int]:
    """The ports the target's emulators will bind (none for external, nor for a LocalStack
    that already runs)."""
    p, taken = opts.ports, {}
    if target in ("moto", "dynamodb-local") or (
        target == "localstack" and not emulators.localstack_answers(_localstack_url(opts))
    ):
        taken["aws"] = p.aws
    if target == "localstack":
        taken["moto"] = p.moto
    if target in ("dynamodb-local", "localstack"):
        taken["dynamodb"] = p.dynamodb
    return taken


def start(target: str, opts: Options, supervisor: Supervisor) -> tuple[Aws, str]:
    """Start the target's emulators (or take the external endpoints); the services, their
    environment and a line saying where each runs."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    env = {"AWS_DEFAULT_REGION": region, "AWS_REGION": region}
    if target == "external":
        # Exactly what the user's variables say; no endpoint at all means AWS itself, with
        # the credentials boto3 finds (never a placeholder).
        source = os.environ if opts.external_env is None else opts.external_env
        wanted = ["AWS_ENDPOINT_URL", *(endpoints.env_var(s) for s in endpoints.SERVICES)]
        env.update({var: source[var] for var in [*wanted, *_CREDENTIALS] if source.get(var)})
        if endpoints.configured(env):
            _local_credentials_if_missing(env)
        detail = ", ".join(f"{s} {endpoints.endpoint(s, env) or 'AWS'}" for s in endpoints.SERVICES)
    else:
        _local_credentials_if_missing(env)
        try:
            detail = _start_emulators(target, opts, supervisor, env)
        except emulators.NotInstalled as e:
            raise StartError(str(e)) from None
    try:
        account = endpoints.account_id(env)
    except Exception as e:
        where = endpoints.endpoint("sts", env)
        raise StartError(f"STS GetCallerIdentity failed on {where}: {e}") from e
    return Aws(target, env, account), f"{detail}; account {account}"


def _start_emulators(target: str, opts: Options, sup: Supervisor, env: dict[str, str]) -> str:
    """The emulators of a local target, each a component of the stack; ``env`` learns
    their endpoints."""
    host, p = opts.host, opts.ports
    beside_localstack = target == "localstack"
    moto_port = p.moto if beside_localstack else p.aws
    moto_url = f"http://{host}:{moto_port}"
    moto_name = "moto" if beside_localstack else "aws"
    wanted: list[Component] = [emulators.moto(moto_name, host, moto_port)]
    parts = []
    if beside_localstack:
        url = _localstack_url(opts)
        if emulators.localstack_answers(url):
            parts.append(f"LocalStack at {url} (already running)")
        else:
            wanted.append(emulators.localstack(host, p.aws, opts.dir / "localstack"))
            parts.append(f"LocalStack at {url}")
        env["AWS_ENDPOINT_URL"] = url
        # What LocalStack's free edition does not serve: sign-in (cognito-idp) on moto.
        env[endpoints.env_var("cognito-idp")] = moto_url
        parts.append(f"cognito-idp on moto at {moto_url}")
    else:
        env["AWS_ENDPOINT_URL"] = moto_url
        parts.append(f"moto server at {moto_url}")
    if target in ("dynamodb-local", "localstack"):
        wanted.append(emulators.dynamodb_local(host, p.dynamodb, opts.dir))
        url = f"http://{host}:{p.dynamodb}"
        env[endpoints.env_var("dynamodb")] = url
        parts.append(f"DynamoDB Local at {url}")
    sup.start(*wanted)
    return ", ".join(parts)


def _localstack_url(opts: Options) -> str:
    return f"http://{opts.host}:{opts.ports.aws}"


def _local_credentials_if_missing(env: dict[str, str]) -> None:
    # The emulators accept any credentials; real ones are never needed locally.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env[key] = os.environ.get(key, "test")
