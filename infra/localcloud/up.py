"""``up``: the whole stack on one machine, from template.yaml, with no keys and no Docker.

`Stack` is the list of steps for an ``--aws`` / ``--chunk-log`` / ``--lambda`` choice:
AWS (aws.py: the target's emulators, or the endpoints given) -> Redis when the chunk log is
Redis Streams (redis_server.py) -> resources provisioned from the template -> the model
(model.py: the fake OpenAI unless a real one is configured) -> Lambda containers
(lambda_containers.py, ``--lambda sam`` only) -> the functions (functions.py: the api and
stream apps, the worker's pollers) -> the page (page.py). Each step declares components;
the supervisor (supervisor.py) starts, records, stops and revives them; their logs go to
``.localcloud/<stack>/logs``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcloud import (
    aws,
    functions,
    lambda_containers,
    model,
    page,
    processes,
    redis_server,
    samlocal,
    state,
)
from localcloud.options import Options, Ports, StartError, free_port
from localcloud.provision import provision_stack
from localcloud.supervisor import Supervisor
from localcloud.template import LocalTemplate
from localcloud.users import LocalUser, UserPool

# The names the tests and the benchmark import from here.
__all__ = ["Options", "Ports", "Stack", "StartError", "free_port"]

Step = tuple[str, Callable[[], str]]


class Stack:
    def __init__(self, options: Options, progress: Callable[[str], None] | None = None) -> None:
        self.opts = options
        self.progress = progress or (lambda _msg: None)
        self.target = aws.choose_target(options.aws)
        self.supervisor = Supervisor(options.dir, lambda: {**functions.environ(), **self.aws_env})
        self.aws: aws.Aws | None = None
        self.urls: dict[str, str] = {}
        self.env: dict[str, dict[str, str]] = {}  # each function's, as last started
        self.template: LocalTemplate | None = None
        self.model = model.Model()
        self.chunk_env: dict[str, str] = {}
        self.pool: UserPool | None = None
        self.lambda_image = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Stack:
        o = self.opts
        (o.dir / "logs").mkdir(parents=True, exist_ok=True)
        steps = self._steps()
        self._check_ports(self._ports_to_bind())  # every port first: a port in use starts nothing
        self.supervisor.processes_file.unlink(missing_ok=True)
        try:
            for c in model.components(o):  # they need nothing else: beside the emulators
                self.supervisor.spawn(c)
            for n, (what, fn) in enumerate(steps, 1):
                self._step(n, len(steps), what, fn)
        except BaseException:
            self.stop()
            raise
        self._save_state()
        return self

    def _steps(self) -> list[Step]:
        """What this stack's options start, in order."""
        o = self.opts
        if o.chunk_log not in ("dynamodb", "redis"):
            raise StartError(f"unknown chunk log {o.chunk_log!r}: dynamodb or redis")
        if o.functions not in ("local", "sam"):
            raise StartError(f"unknown --lambda {o.functions!r}: local or sam")
        if o.functions == "sam" and self.target != "moto":
            raise StartError(
                "--lambda sam runs on the moto target only: SAM gives a function only "
                "the variables the template declares, and it declares one AWS endpoint"
            )
        return [
            (f"AWS ({self.target})", self._aws),
            *([("Redis (the chunk log)", self._redis)] if o.chunk_log == "redis" else []),
            ("resources from template.yaml", self._provision),
            ("model", self._model),
            *(
                [("Lambda containers (Docker engine, image)", self._engine)]
                if o.functions == "sam"
                else []
            ),
            ("api, stream and worker functions", lambda: functions.start(self)),
            ("frontend", lambda: page.start(self)),
        ]

    def start_aws(self) -> Stack:
        """Only the target's AWS emulators, until ``stop``: stacks of target "external"
        given their ``aws_env`` share them (each stack's resources are named after it)."""
        (self.opts.dir / "logs").mkdir(parents=True, exist_ok=True)
        self._check_ports(aws.ports(self.target, self.opts))
        try:
            self._step(1, 1, f"AWS ({self.target})", self._aws)
        except BaseException:
            self.stop()
            raise
        return self

    def _ports_to_bind(self) -> dict[str, int]:
        o = self.opts
        ports = {"api": o.ports.api, "stream": o.ports.stream, "frontend": o.ports.frontend}
        ports.update(aws.ports(self.target, o))
        if not model.real_model():
            ports["openai"] = o.ports.openai
        if o.chunk_log == "redis":
            ports.update(redis_server.ports(o))
        if o.functions == "sam":
            ports["invoke"] = o.ports.invoke
        return ports

    def _check_ports(self, ports: dict[str, int]) -> None:
        try:
            processes.check_ports(ports, self.opts.host)
        except processes.PortInUse as e:
            raise StartError(str(e)) from None

    def stop(self) -> None:
        def containers_left() -> None:
            if self.lambda_image:  # a container SAM had no time to stop (cut short)
                samlocal.remove_containers(self.lambda_image)

        self.supervisor.stop(after_users=containers_left)
        self.opts.state_file.unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scale(self, workers: int) -> None:
        """Run ``workers`` concurrent worker invocations per event source from now on. The
        pollers stop gracefully (answers in progress finish) and start again."""
        self.supervisor.stop_gracefully(lambda name: name.startswith("worker"))
        self.opts.workers = workers
        self.supervisor.start(*functions.pollers(self))
        self._save_state()

    def use_chunk_log(self, backend: str) -> None:
        """Run the functions on another chunk-log backend from now on (the benchmark compares
        backends on one stack). Answers in progress finish first, as in ``scale``."""
        if backend == self.opts.chunk_log:
            return
        if backend not in ("dynamodb", "redis"):
            raise StartError(f"unknown chunk log {backend!r}: dynamodb or redis")
        self.supervisor.stop_gracefully(
            lambda name: name in ("api", "stream") or name.startswith("worker")
        )
        if backend == "redis" and "redis" not in self.urls:
            self._redis()
        self.chunk_env = (
            {"CHUNKLOG_BACKEND": "redis", "REDIS_URL": self.urls["redis"]}
            if backend == "redis"
            else {}
        )
        self.opts.chunk_log = backend
        functions.start(self)
        self._save_state()

    # ------------------------------------------------------------------ what it is
    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.supervisor.procs

    @property
    def aws_env(self) -> dict[str, str]:
        return self.aws.env if self.aws else {}

    @property
    def endpoints(self) -> dict[str, str | None]:
        """Where each AWS service is, as boto3 decides it (None: AWS itself)."""
        return self.aws.endpoints if self.aws else {}

    @property
    def account(self) -> str:
        assert self.aws is not None
        return self.aws.account

    def _save_state(self) -> None:
        state.save(self)

    @property
    def auth_config(self) -> dict[str, str]:
        """Where the page and the tools sign users in: the local user pool's app client."""
        assert self.pool is not None and self.aws is not None
        return {
            "region": self.aws.region,
            "userPoolId": self.pool.pool_id,
            "clientId": self.pool.client_id,
            "endpoint": self.aws.cognito_url + "/",
        }

    def ensure_user(self, name: str, *, admin: bool = False) -> LocalUser:
        """A signed-in user of the local pool (created if missing; ``admin``: an operator)."""
        assert self.pool is not None
        return self.pool.ensure_user(name, admin=admin)

    def sam_local_env_file(self) -> Path:
        return self.opts.dir / "sam-local-env.json"

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` on this stack's endpoints, as its functions have."""
        assert self.aws is not None
        return self.aws.client(service)

    # ------------------------------------------------------------------ its processes
    def check(self) -> None:
        """Raise if a component has died."""
        self.supervisor.check()

    def log(self, name: str) -> Path:
        return self.supervisor.log(name)

    def kill(self, name: str) -> None:
        """Stop one component at once (SIGKILL), as a crash or a cut connection would."""
        self.supervisor.kill(name)

    def revive(self, name: str) -> None:
        """Start a component again with the command and environment it had."""
        self.supervisor.revive(name)

    # ------------------------------------------------------------------ steps
    def _step(self, n: int, of: int, what: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        self.progress(f"[{n}/{of}] {what} ...")
        detail = fn()
        self.progress(f"[{n}/{of}] {what}: {detail} ({time.monotonic() - started:.1f}s)")

    def _aws(self) -> str:
        self.aws, detail = aws.start(self.target, self.opts, self.supervisor)
        self.urls["aws"] = self.aws.url
        return detail

    def _redis(self) -> str:
        url, detail = redis_server.start(self.opts, self.supervisor)
        self.urls["redis"] = url
        self.chunk_env = {"CHUNKLOG_BACKEND": "redis", "REDIS_URL": url}
        return detail

    def _provision(self) -> str:
        assert self.aws is not None
        self.template, self.pool, detail = provision_stack(self.opts, self.aws)
        return detail

    def _engine(self) -> str:
        return lambda_containers.engine(self)

    def _model(self) -> str:
        assert self.template is not None
        secrets = self.client("secretsmanager")
        self.model = model.ready(self.opts, self.supervisor, self.template, secrets)
        if self.model.fake:
            self.urls["openai"] = str(self.model.url)
        elif self.model.url:
            self.urls["model"] = self.model.url
        return model.describe(self.model)
