"""What a local stack is asked to be: its ports, its AWS target, its chunk log, how its
functions run, and the fake model's pace (`./run.sh start`'s flags, the tests' stacks)."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.template import ROOT


class StartError(RuntimeError):
    pass


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

    @classmethod
    def free(cls) -> Ports:
        """Every port one that nobody listens on now: a stack beside any other."""
        return cls(**{f.name: free_port() for f in dataclasses.fields(cls)})

    def offset(self, by: int) -> Ports:
        """Every port moved by ``by`` (`--port-offset`: a second stack)."""
        return Ports(**{k: v + by for k, v in dataclasses.asdict(self).items()})


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

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"
