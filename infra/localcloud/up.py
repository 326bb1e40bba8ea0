"""``up``: the whole stack on one machine, from template.yaml, with no keys and no Docker.

AWS endpoints (the target: moto server; or moto with DynamoDB Local; or LocalStack with
DynamoDB Local; or whatever the standard AWS_ENDPOINT_URL variables say) -> Redis, when the
chunk log is Redis Streams (redis-server unless REDIS_URL is set) -> provision from the
template -> fake OpenAI (unless OPENAI_API_KEY is set) -> api and stream apps (uvicorn),
the SQS poller for the worker, and the frontend. Each runs as its own process with the
environment the template gives its function; logs go to ``.localcloud/<stack>/logs``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from localcloud import TARGETS, emulators, endpoints, processes, samlocal
from localcloud.provision import provision
from localcloud.template import ROOT, LocalTemplate
from localcloud.users import LocalUser, UserPool

# Logical ids of the template's functions, and how each runs locally.
API_FUNCTION = "ApiFunction"
STREAM_FUNCTION = "StreamFunction"
STREAM_APP = "llmstream.stream:app"  # what the stream function's run.sh starts under LWA


def free_port() -> int:
    """A TCP port nobody listens on right now (for stacks of their own: tests, benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ports:
    aws: int = 4566  # LocalStack's port, so tools that default to it find the emulator
    api: int = 8007
    stream: int = 8008
    openai: int = 8009
    frontend: int = 3000
    redis: int = 6380  # not Redis's own 6379, which a system redis-server may hold
    dynamodb: int = 8000  # DynamoDB Local's own default (targets dynamodb-local, localstack)
    moto: int = 4567  # moto beside LocalStack, for what LocalStack's free edition lacks
    invoke: int = 3001  # `--lambda sam`: the Lambda Invoke API (sam local start-lambda's own)


@dataclass
class Options:
    stack: str = "llmstream-local"
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    workers: int = 4
    fake_tokens: int = 60
    fake_tps: float = 50.0
    fake_ttft_ms: float = 200.0
    state_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # The functions' AWS endpoint variables, where they differ from the emulators' own
    # addresses (the benchmark puts a request-counting proxy in between).
    function_endpoints: dict[str, str] = field(default_factory=dict)
    # Run ``workers`` invocations per queue even above the template's MaximumConcurrency
    # (the benchmark measures the pipeline at a concurrency, not the queue's cap).
    ignore_concurrency_caps: bool = False
    # The chunk log's backend: "dynamodb" (the template's table) or "redis" (Redis Streams).
    chunk_log: str = "dynamodb"
    # Where the AWS services run (TARGETS); "auto": "external" when the standard endpoint
    # variables name an endpoint, else "moto".
    aws: str = "auto"
    # For "external": the endpoint variables (and credentials) to use instead of this
    # process's environment (the e2e tier shares one set of emulators between its stacks).
    external_env: dict[str, str] | None = None
    # How the api and worker functions run: "local" (a process per execution environment,
    # no Docker) or "sam" (Lambda containers under `sam local`; see samlocal.py).
    functions: str = "local"
    # Template parameters besides the stack's own (e.g. WorkerTimeout).
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.state_dir or ROOT / ".localcloud" / self.stack


class StartError(RuntimeError):
    pass


class Stack:
    def __init__(self, options: Options, progress: Callable[[str], None] | None = None) -> None:
        self.opts = options
        self.progress = progress or (lambda _msg: None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self._logs: list[IO[bytes]] = []
        self.urls: dict[str, str] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.template: LocalTemplate | None = None
        self.fake_openai = False
        self.chunk_env: dict[str, str] = {}
        self.pool: UserPool | None = None
        self.aws_env: dict[str, str] = {}
        self.endpoints: dict[str, str | None] = {}
        self.lambda_image = ""
        if options.aws == "auto":
            self.target = "external" if endpoints.configured(os.environ) else "moto"
        elif options.aws in TARGETS:
            self.target = options.aws
        else:
            raise StartError(f"unknown AWS target {options.aws!r}: {', '.join(TARGETS)}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Stack:
        o = self.opts
        (o.dir / "logs").mkdir(parents=True, exist_ok=True)
        try:  # every port first: a port in use starts nothing
            processes.check_ports(self._ports_to_bind(), o.host)
        except processes.PortInUse as e:
            raise StartError(str(e)) from None
        self._processes_file().unlink(missing_ok=True)
        steps: list[tuple[str, Callable[[], str]]] = [(f"AWS ({self.target})", self._aws)]
        if o.chunk_log == "redis":
            steps.append(("Redis (the chunk log)", self._redis))
        elif o.chunk_log != "dynamodb":
            raise StartError(f"unknown chunk log {o.chunk_log!r}: dynamodb or redis")
        steps += [
            ("resources from template.yaml", self._provision),
            ("model", self._model),
        ]
        if o.functions == "sam":
            if self.target != "moto":
                raise StartError(
                    "--lambda sam runs on the moto target only: SAM gives a function only "
                    "the variables the template declares, and it declares one AWS endpoint"
                )
            steps.append(("Lambda containers (Docker engine, image)", self._lambda_containers))
        elif o.functions != "local":
            raise StartError(f"unknown --lambda {o.functions!r}: local or sam")
        steps += [
            ("api, stream and worker functions", self._functions),
            ("frontend", self._frontend),
        ]
        try:
            # The fake model needs nothing else: it starts beside the emulators.
            self._spawn_fake_model()
            for n, (what, fn) in enumerate(steps, 1):
                self._step(n, len(steps), what, fn)
        except BaseException:
            self.stop()
            raise
        (o.dir / "state.json").write_text(json.dumps(self.state(), indent=2))
        self.sam_local_env_file().write_text(json.dumps(self.sam_local_env(), indent=2))
        return self

    def start_aws(self) -> Stack:
        """Only the target's AWS emulators, until ``stop``: stacks of target "external"
        given their ``aws_env`` share them (each stack's resources are named after it)."""
        (self.opts.dir / "logs").mkdir(parents=True, exist_ok=True)
        ports = self._ports_to_bind()
        try:
            processes.check_ports(
                {k: v for k, v in ports.items() if k in ("aws", "moto", "dynamodb")},
                self.opts.host,
            )
        except processes.PortInUse as e:
            raise StartError(str(e)) from None
        try:
            self._step(1, 1, f"AWS ({self.target})", self._aws)
        except BaseException:
            self.stop()
            raise
        return self

    def _ports_to_bind(self) -> dict[str, int]:
        o = self.opts
        ports = {"api": o.ports.api, "stream": o.ports.stream, "frontend": o.ports.frontend}
        target = self.target
        if target in ("moto", "dynamodb-local") or (
            target == "localstack" and not emulators.localstack_answers(self._localstack_url())
        ):
            ports["aws"] = o.ports.aws
        if target == "localstack":
            ports["moto"] = o.ports.moto
        if target in ("dynamodb-local", "localstack"):
            ports["dynamodb"] = o.ports.dynamodb
        if not _real_model():
            ports["openai"] = o.ports.openai
        if o.chunk_log == "redis" and not os.environ.get("REDIS_URL"):
            ports["redis"] = o.ports.redis
        if o.functions == "sam":
            ports["invoke"] = o.ports.invoke
        return ports

    def _processes_file(self) -> Path:
        """The stack's processes as started (pids and start times), for `stop` and `status`
        when the supervisor itself is gone."""
        return self.opts.dir / "processes.json"

    def _record(self) -> None:
        recorded = [processes.Recorded.of("supervisor", os.getpid())] + [
            processes.Recorded.of(name, proc.pid) for name, proc in self.procs.items()
        ]
        tmp = self._processes_file().with_suffix(".tmp")
        tmp.write_text(json.dumps([r.__dict__ for r in recorded], indent=2))
        tmp.replace(self._processes_file())

    def stop(self) -> None:
        # The functions first (the pollers finish their long polls and invocations against a
        # live emulator), then the stores.
        stores = ("aws", "moto", "dynamodb", "redis", "docker")
        first = {n: p for n, p in self.procs.items() if n not in stores}
        last = {n: p for n, p in self.procs.items() if n in stores}
        for group in (first, last):
            for proc in reversed(list(group.values())):
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        continue
            deadline = time.monotonic() + 10
            for proc in group.values():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if group is first and self.lambda_image:
                # A container SAM had no time to stop (its invocation was cut short).
                samlocal.remove_containers(self.lambda_image)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        (self.opts.dir / "state.json").unlink(missing_ok=True)
        self._processes_file().unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scale(self, workers: int) -> None:
        """Run ``workers`` concurrent worker invocations per event source from now on. The
        pollers stop gracefully (answers in progress finish) and start again."""
        self._stop_gracefully(lambda name: name.startswith("worker"))
        self.opts.workers = workers
        self._start_pollers()
        (self.opts.dir / "state.json").write_text(json.dumps(self.state(), indent=2))

    def use_chunk_log(self, backend: str) -> None:
        """Run the functions on another chunk-log backend from now on (the benchmark compares
        backends on one stack). Answers in progress finish first, as in ``scale``."""
        if backend == self.opts.chunk_log:
            return
        if backend not in ("dynamodb", "redis"):
            raise StartError(f"unknown chunk log {backend!r}: dynamodb or redis")
        self._stop_gracefully(lambda name: name in ("api", "stream") or name.startswith("worker"))
        if backend == "redis" and "redis" not in self.urls:
            self._redis()
        self.chunk_env = (
            {"CHUNKLOG_BACKEND": "redis", "REDIS_URL": self.urls["redis"]}
            if backend == "redis"
            else {}
        )
        self.opts.chunk_log = backend
        self._functions()
        (self.opts.dir / "state.json").write_text(json.dumps(self.state(), indent=2))

    def _stop_gracefully(self, which: Callable[[str], bool]) -> None:
        """SIGINT the named components and wait: pollers finish the answers they run (on
        SIGTERM they stop at once, and the answers' messages come back to the queue)."""
        for name in [n for n in self.procs if which(n)]:
            proc = self.procs.pop(name)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=360)
        self._record()

    def state(self) -> dict[str, Any]:
        return {
            "stack": self.opts.stack,
            "pid": os.getpid(),
            "workers": self.opts.workers,
            "urls": self.urls,
            "aws": {"target": self.target, "env": endpoints.public(self.aws_env)},
            "pids": {name: p.pid for name, p in self.procs.items()},
            "logs": str(self.opts.dir / "logs"),
            "fake_openai": self.fake_openai,
            "chunk_log": self.opts.chunk_log,
            "functions": self.opts.functions,
            "auth": self.auth_config,
            "queues": dict(self.template.queue_urls) if self.template else {},
        }

    @property
    def auth_config(self) -> dict[str, str]:
        """Where the page and the tools sign users in: the local user pool's app client."""
        assert self.pool is not None
        return {
            "region": self.aws_env["AWS_DEFAULT_REGION"],
            "userPoolId": self.pool.pool_id,
            "clientId": self.pool.client_id,
            "endpoint": self._cognito_url() + "/",
        }

    def ensure_user(self, name: str, *, admin: bool = False) -> LocalUser:
        """A signed-in user of the local pool (created if missing; ``admin``: an operator)."""
        assert self.pool is not None
        return self.pool.ensure_user(name, admin=admin)

    def sam_local_env_file(self) -> Path:
        return self.opts.dir / "sam-local-env.json"

    def sam_local_env(self) -> dict[str, dict[str, str]]:
        """`sam local --env-vars` file: each function's environment as this stack runs it
        (template values resolved to the local resources, the local AWS endpoint), as its
        container reaches them (by the host's alias, through the relay: `--lambda sam`)."""
        assert self.template is not None
        out: dict[str, dict[str, str]] = {}
        for logical_id, spec in self.template.functions().items():
            env = {
                **spec.environment,
                # an emulator's placeholder credentials; never a real account's
                **(self.aws_env if self.target != "external" else endpoints.public(self.aws_env)),
                **self.chunk_env,
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
            if "OPENAI_BASE_URL" in self.openai_env:
                env["OPENAI_BASE_URL"] = self.openai_env["OPENAI_BASE_URL"]
            if not env.get("AUTH_JWKS_URL") and self.pool is not None:
                env["AUTH_JWKS_URL"] = self._jwks_url()
            env.update(self.opts.extra_env)
            out[logical_id] = samlocal.in_container(env)
        return out

    def check(self) -> None:
        """Raise if a component has died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StartError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def log(self, name: str) -> Path:
        return self.opts.dir / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ steps
    def _step(self, n: int, of: int, what: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        self.progress(f"[{n}/{of}] {what} ...")
        detail = fn()
        self.progress(f"[{n}/{of}] {what}: {detail} ({time.monotonic() - started:.1f}s)")

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on this stack's endpoints, as its functions have."""
        return endpoints.client(service, self.aws_env)

    def _aws(self) -> str:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        env = self.aws_env = {"AWS_DEFAULT_REGION": region, "AWS_REGION": region}
        if self.target == "external":
            # Exactly what the user's variables say; no endpoint at all means AWS itself, with
            # the credentials boto3 finds (never a placeholder).
            source = os.environ if self.opts.external_env is None else self.opts.external_env
            for var in ["AWS_ENDPOINT_URL", *(endpoints.env_var(s) for s in endpoints.SERVICES)]:
                if source.get(var):
                    env[var] = source[var]
            for var in (
                "AWS_PROFILE",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            ):
                if source.get(var):
                    env[var] = source[var]
            if endpoints.configured(env):
                self._local_credentials_if_missing()
            detail = ", ".join(
                f"{s} {endpoints.endpoint(s, env) or 'AWS'}" for s in endpoints.SERVICES
            )
        else:
            self._local_credentials_if_missing()
            try:
                detail = self._start_emulators()
            except emulators.NotInstalled as e:
                raise StartError(str(e)) from None
        self.endpoints = {s: endpoints.endpoint(s, env) for s in endpoints.SERVICES}
        self.urls["aws"] = self.endpoints["sqs"] or f"https://sqs.{region}.amazonaws.com"
        try:
            self.account = endpoints.account_id(env)
        except Exception as e:
            raise StartError(f"STS GetCallerIdentity failed on {self.endpoints['sts']}: {e}") from e
        return f"{detail}; account {self.account}"

    def _start_emulators(self) -> str:
        """The emulators of a local target, each a child of this stack."""
        o, env = self.opts, self.aws_env
        parts = []
        moto_port = o.ports.moto if self.target == "localstack" else o.ports.aws
        moto_url = f"http://{o.host}:{moto_port}"
        self._spawn(
            "aws" if self.target != "localstack" else "moto",
            emulators.moto_command(o.host, moto_port),
        )
        self._wait_http(
            "aws" if self.target != "localstack" else "moto", f"{moto_url}/moto-api/data.json"
        )
        if self.target == "localstack":
            url = self._localstack_url()
            if emulators.localstack_answers(url):
                parts.append(f"LocalStack at {url} (already running)")
            else:
                self._spawn(
                    "aws",
                    emulators.localstack_command(o.host, o.ports.aws, o.dir / "localstack"),
                    env=emulators.localstack_env(o.host, o.ports.aws, o.dir / "localstack"),
                )
                self._wait("aws", lambda: emulators.localstack_answers(url), timeout=120)
                parts.append(f"LocalStack at {url}")
            env["AWS_ENDPOINT_URL"] = url
            # What LocalStack's free edition does not serve: sign-in (cognito-idp) on moto.
            env[endpoints.env_var("cognito-idp")] = moto_url
            parts.append(f"cognito-idp on moto at {moto_url}")
        else:
            env["AWS_ENDPOINT_URL"] = moto_url
            parts.append(f"moto server at {moto_url}")
        if self.target in ("dynamodb-local", "localstack"):
            url = f"http://{o.host}:{o.ports.dynamodb}"
            self._spawn(
                "dynamodb",
                emulators.dynamodb_local_command(o.host, o.ports.dynamodb),
                cwd=o.dir,  # where it writes its metadata file
            )
            self._wait("dynamodb", lambda: emulators.dynamodb_local_answers(url), timeout=60)
            env[endpoints.env_var("dynamodb")] = url
            parts.append(f"DynamoDB Local at {url}")
        return ", ".join(parts)

    def _localstack_url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.ports.aws}"

    def _cognito_url(self) -> str:
        url = self.endpoints.get("cognito-idp") or (
            f"https://cognito-idp.{self.aws_env['AWS_DEFAULT_REGION']}.amazonaws.com"
        )
        return url.rstrip("/")

    def _redis(self) -> str:
        o = self.opts
        url = os.environ.get("REDIS_URL")
        if url:
            if not redis_answers(url):
                raise StartError(f"REDIS_URL {url} does not answer PING")
            detail = f"using {url} (REDIS_URL)"
        else:
            url = f"redis://{o.host}:{o.ports.redis}/0"
            self._spawn("redis", redis_server_command(o.host, o.ports.redis, o.dir))
            self._wait("redis", lambda: redis_answers(url))
            detail = f"redis-server at {url}"
        self.urls["redis"] = url
        self.chunk_env = {"CHUNKLOG_BACKEND": "redis", "REDIS_URL": url}
        return detail

    def _local_credentials_if_missing(self) -> None:
        # The emulators accept any credentials; real ones are never needed locally.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            self.aws_env[key] = os.environ.get(key, "test")

    def _provision(self) -> str:
        o = self.opts
        tpl = LocalTemplate.load(
            o.stack,
            # Locally the page runs on another port, and direct mode is on (it is off by
            # default in the cloud, where the stream URL is public).
            parameters={"AllowedOrigin": "*", "EnableDirectMode": "true", **o.parameters},
            region=self.aws_env["AWS_DEFAULT_REGION"],
        )
        tpl.overrides[f"{STREAM_FUNCTION}Url.FunctionUrl"] = f"http://{o.host}:{o.ports.stream}/"
        tpl.account = self.account
        clients = {
            name.replace("-idp", ""): self.client(name)
            for name in ("sqs", "dynamodb", "s3", "secretsmanager", "cognito-idp")
        }
        provision(tpl, **clients)
        self.template = tpl
        self.secretsmanager = clients["secretsmanager"]
        self.pool = UserPool(
            cognito=clients["cognito"],
            pool_id=tpl.overrides["UserPool.Ref"],
            client_id=tpl.overrides["UserPoolClient.Ref"],
            passwords_file=o.dir / "users.json",
        )
        counts = {
            kind: len(tpl.of_type(f"AWS::{kind}"))
            for kind in ("SQS::Queue", "DynamoDB::Table", "S3::Bucket")
        }
        return ", ".join(f"{n} {k.split('::')[1].lower()}(s)" for k, n in counts.items())

    def _spawn_fake_model(self) -> None:
        o = self.opts
        if _real_model():
            return
        self._spawn(
            "openai",
            [
                sys.executable,
                "-m",
                "localcloud",
                "fake-openai",
                "--host",
                o.host,
                "--port",
                str(o.ports.openai),
                "--tokens",
                str(o.fake_tokens),
                "--tps",
                str(o.fake_tps),
                "--ttft-ms",
                str(o.fake_ttft_ms),
            ],
        )

    def _model(self) -> str:
        o = self.opts
        base_url = os.environ.get("OPENAI_BASE_URL", "").strip()
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if _real_model():
            # A real model: OpenAI, or any OpenAI-compatible API (a local Ollama or vLLM
            # server needs no key, but the SDK wants one).
            self.openai_env: dict[str, str] = {"OPENAI_BASE_URL": base_url} if base_url else {}
            self._store_openai_key(key or "sk-no-key-needed")
            if base_url:
                self.urls["model"] = base_url
            return f"{base_url or 'the OpenAI API'} (OPENAI_BASE_URL / OPENAI_API_KEY)"
        url = f"http://{o.host}:{o.ports.openai}"
        if "openai" not in self.procs:
            self._spawn_fake_model()
        self._wait_http("openai", f"{url}/health")
        self.urls["openai"] = f"{url}/v1"
        self.fake_openai = True
        self.openai_env = {"OPENAI_BASE_URL": f"{url}/v1"}
        self._store_openai_key("sk-local-fake")
        return f"fake OpenAI at {url}/v1"

    def _store_openai_key(self, key: str) -> None:
        """Put the key in the secret the worker reads it from, as `./run.sh deploy` does."""
        assert self.template is not None
        for spec in self.template.functions().values():
            arn = spec.environment.get("OPENAI_API_KEY_SECRET_ARN")
            if arn:
                self.secretsmanager.put_secret_value(SecretId=arn, SecretString=key)

    def _function_env(self, logical_id: str) -> dict[str, str]:
        assert self.template is not None
        spec = self.template.functions()[logical_id]
        env = {
            **_environ(),
            **self.aws_env,
            **spec.environment,
            **self.openai_env,
            **self.chunk_env,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "LOCALCLOUD_ACCOUNT_ID": self.account,
            # X-Ray has no daemon locally.
            "POWERTOOLS_TRACE_DISABLED": "true",
            **self.opts.extra_env,
        }
        env.update(self.opts.function_endpoints)
        if not env.get("AUTH_JWKS_URL") and self.pool is not None:
            env["AUTH_JWKS_URL"] = self._jwks_url()
        env.pop("AWS_LWA_INVOKE_MODE", None)
        env.pop("AWS_LAMBDA_EXEC_WRAPPER", None)
        self.env[logical_id] = env
        return env

    def _jwks_url(self) -> str:
        """The issuer is Cognito's form (moto signs it so); the keys are the emulator's."""
        assert self.pool is not None
        return f"{self._cognito_url()}/{self.pool.pool_id}/.well-known/jwks.json"

    def _lambda_containers(self) -> str:
        """`--lambda sam`: a Docker engine (started as a component if none runs) and the
        functions' image (built if missing)."""
        parts = []
        with samlocal.building():
            if samlocal.engine_answers():
                parts.append("Docker engine running")
            else:
                try:
                    argv = samlocal.dockerd_command(self.opts.dir)
                except samlocal.SamLocalError as e:
                    raise StartError(str(e)) from None
                self._spawn("docker", argv)
                self._wait("docker", samlocal.engine_answers, timeout=90)
                parts.append("dockerd started (stops with the stack)")
            try:
                self.lambda_image, built = samlocal.ensure_image(self.progress)
            except samlocal.SamLocalError as e:
                raise StartError(str(e)) from None
        parts.append(f"image {self.lambda_image}{' (built)' if built else ''}")
        return ", ".join(parts)

    def _sam_functions(self) -> None:
        """The api under `sam local start-api`, the worker under `start-lambda` (invoked by
        the poller), and the relay that lets their containers reach this stack."""
        o = self.opts
        called = [
            *(url for url in self.endpoints.values() if url),
            *self.openai_env.values(),
            *([self.urls["redis"]] if "redis" in self.urls else []),
        ]
        ports = samlocal.loopback_ports(called)
        try:
            bridge = samlocal.bridge_address()
        except samlocal.SamLocalError as e:
            raise StartError(str(e)) from None
        if "relay" in self.procs:  # again (another chunk log): its ports may change
            self._stop_gracefully(lambda name: name == "relay")
        if ports:
            self._spawn(
                "relay",
                [
                    sys.executable,
                    "-m",
                    "localcloud",
                    "relay",
                    "--listen",
                    bridge,
                    "--to",
                    o.host,
                    "--ports",
                    *map(str, ports),
                ],
            )
            pid = self.procs["relay"].pid
            self._wait("relay", lambda: all(processes.listens(pid, p) for p in ports))
        env_file = self.sam_local_env_file()
        env_file.write_text(json.dumps(self.sam_local_env(), indent=2))
        parameters = {
            "AllowedOrigin": "*",
            "EnableDirectMode": "true",
            **o.parameters,
            "LocalEndpointUrl": samlocal.to_host_alias(self.aws_env["AWS_ENDPOINT_URL"]),
        }
        # SAM itself calls no AWS endpoint; it hands its credentials and region on.
        env = {**_environ(), **{k: v for k, v in self.aws_env.items() if "ENDPOINT" not in k}}
        for name, kind, port in (
            ("api", "start-api", o.ports.api),
            ("worker-lambda", "start-lambda", o.ports.invoke),
        ):
            argv = samlocal.command(
                kind,
                host=o.host,
                port=port,
                env_file=env_file,
                image=self.lambda_image,
                parameters=parameters,
            )
            self._spawn(name, argv, env=env)
        pid = self.procs["worker-lambda"].pid
        self._wait("worker-lambda", lambda: processes.listens(pid, o.ports.invoke))
        self.urls["invoke"] = f"http://{o.host}:{o.ports.invoke}"

    def _functions(self) -> str:
        o = self.opts
        tpl = self.template
        assert tpl is not None
        api_module = tpl.functions()[API_FUNCTION].handler.rpartition(".")[0]
        uvicorn_apps = [
            ("api", f"{api_module}:app", o.ports.api, API_FUNCTION),
            ("stream", STREAM_APP, o.ports.stream, STREAM_FUNCTION),
        ]
        # The page needs only the functions' URLs: it starts while they do.
        self._spawn_frontend()
        if o.functions == "sam":
            self._sam_functions()
            uvicorn_apps = uvicorn_apps[1:]  # the stream function stays here (see README)
        for name, app, port, logical in uvicorn_apps:
            self._spawn(
                name,
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    app,
                    "--host",
                    o.host,
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--timeout-graceful-shutdown",
                    "3",
                ],
                env=self._function_env(logical),
            )
        self.urls["api"] = f"http://{o.host}:{o.ports.api}"
        self.urls["stream"] = f"http://{o.host}:{o.ports.stream}"
        self._start_pollers()
        if o.functions == "sam":
            # Each request starts a container: wait for SAM's port, then ask once.
            pid = self.procs["api"].pid
            self._wait("api", lambda: processes.listens(pid, o.ports.api))
            self._wait("api", lambda: _answers(f"{self.urls['api']}/health", 120), timeout=240)
        else:
            self._wait_http("api", f"{self.urls['api']}/health")
        self._wait_http("stream", f"{self.urls['stream']}/health")
        where = " (api and worker in Lambda containers)" if o.functions == "sam" else ""
        return f"api {self.urls['api']}, stream {self.urls['stream']}, {o.workers} worker(s){where}"

    def _start_pollers(self) -> None:
        tpl = self.template
        assert tpl is not None
        functions = tpl.functions()
        by_function: dict[str, list[dict[str, Any]]] = {}
        for esm in tpl.event_sources():
            fn = functions[esm.function]
            cap = esm.maximum_concurrency or self.opts.workers
            if self.opts.ignore_concurrency_caps:
                cap = self.opts.workers
            by_function.setdefault(esm.function, []).append(
                {
                    "queue_url": tpl.queue_url(esm.queue),
                    "queue_arn": tpl.resolve({"Fn::GetAtt": [esm.queue, "Arn"]}),
                    "handler": fn.handler,
                    "function_name": fn.name,
                    "timeout": fn.timeout,
                    "memory": fn.memory,
                    "batch_size": esm.batch_size,
                    "batching_window": esm.batching_window,
                    "report_batch_item_failures": esm.report_batch_item_failures,
                    "concurrency": min(cap, self.opts.workers),
                    "region": tpl.region,
                    **(
                        {"invoke_url": self.urls["invoke"], "invoke_function": esm.function}
                        if self.opts.functions == "sam"
                        else {}
                    ),
                }
            )
        for function, specs in by_function.items():
            spec_path = self.opts.dir / f"poller-{function}.json"
            spec_path.with_suffix(".ready").unlink(missing_ok=True)
            spec_path.with_suffix(".envs.json").unlink(missing_ok=True)  # an earlier run's
            spec_path.write_text(json.dumps(specs, indent=2))
            name = "worker" if len(by_function) == 1 else f"worker-{function}"
            self._spawn(
                name,
                [sys.executable, "-m", "localcloud", "poll", "--spec", str(spec_path)],
                env=self._function_env(function),
            )
            self._wait(name, lambda p=spec_path: p.with_suffix(".ready").exists())

    def _spawn_frontend(self) -> None:
        o = self.opts
        if "frontend" in self.procs:
            return
        config = json.dumps(
            {
                "apiUrl": f"http://{o.host}:{o.ports.api}",
                "streamUrl": f"http://{o.host}:{o.ports.stream}",
                "auth": self.auth_config,
            }
        )
        self._spawn(
            "frontend",
            [
                sys.executable,
                "-m",
                "localcloud",
                "frontend",
                "--host",
                o.host,
                "--port",
                str(o.ports.frontend),
                "--config",
                config,
            ],
        )

    def _frontend(self) -> str:
        o = self.opts
        self._spawn_frontend()
        url = f"http://{o.host}:{o.ports.frontend}"
        self._wait_http("frontend", f"{url}/config.json")
        self.urls["frontend"] = url
        return url

    # ------------------------------------------------------------------ processes
    def kill(self, name: str) -> None:
        """Stop one component at once (SIGKILL), as a crash or a cut connection would."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def revive(self, name: str) -> None:
        """Start a component again with the command and environment it had."""
        argv, env = self._commands[name]
        self._spawn(name, argv, env)
        if name == "redis":
            self._wait("redis", lambda: redis_answers(self.urls["redis"]))
        elif name in self.urls and name != "aws":
            self._wait_http(name, f"{self.urls[name]}/health")

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self._commands[name] = (argv, env)
        logfile = self.log(name).open("ab")
        self._logs.append(logfile)
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or {**_environ(), **self.aws_env},
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and its children
            preexec_fn=processes.preexec,  # and it dies with this supervisor, however it dies
        )
        self._record()

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-2000:]
                raise StartError(f"{name} exited with {proc.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.1)
        raise StartError(f"{name} not ready after {timeout:.0f}s; see {self.log(name)}")

    def _wait_http(self, name: str, url: str) -> None:
        port = httpx.URL(url).port
        proc = self.procs[name]

        def ready() -> bool:
            # Only our own child counts: a stranger (or a stale stack) answering on the port
            # must not pass for it.
            if port is not None and not processes.listens(proc.pid, port):
                return False
            try:
                return httpx.get(url, timeout=1.0).status_code < 500
            except httpx.HTTPError:
                return False

        self._wait(name, ready)


def _real_model() -> bool:
    """A real model is configured (OpenAI, or an OpenAI-compatible API): no fake one."""
    return bool(
        os.environ.get("OPENAI_BASE_URL", "").strip()
        or os.environ.get("OPENAI_API_KEY", "").strip()
    )


def _answers(url: str, timeout: float) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def _environ() -> dict[str, str]:
    """This process's environment without its AWS endpoint settings: a child gets the
    stack's own (``Stack.aws_env``), never a per-service variable left in the shell that
    would send one service elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_ENDPOINT_URL") and k != "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
    }


def redis_server_command(host: str, port: int, directory: Path) -> list[str]:
    """redis-server in memory only, like a cache node: the chunk log's copy of an answer
    expires anyway, and the request row keeps the final text."""
    server = shutil.which("redis-server")
    if server is None:
        raise StartError(
            "redis-server not found: install the Debian package redis-server "
            "(`./run.sh start --chunk-log redis` and `./run.sh test` do)"
        )
    in_memory = ["--save", "", "--appendonly", "no"]
    return [server, "--bind", host, "--port", str(port), *in_memory, "--dir", str(directory)]


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False
