"""What a running stack writes down for the commands that talk to it (`token`, `status`,
`scale`, `dlq`, `./run.sh start -d`): ``state.json`` in its folder, there while it is up;
and ``sam-local-env.json``, each function's environment for `sam local --env-vars`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud import functions
from localcloud.endpoints import public

if TYPE_CHECKING:
    from localcloud.up import Stack


def snapshot(stack: Stack) -> dict[str, Any]:
    return {
        "stack": stack.opts.stack,
        "pid": os.getpid(),
        "workers": stack.opts.workers,
        "urls": stack.urls,
        "aws": {"target": stack.target, "env": public(stack.aws_env)},
        "pids": {name: p.pid for name, p in stack.procs.items()},
        "logs": str(stack.opts.dir / "logs"),
        "fake_openai": stack.model.fake,
        "chunk_log": stack.opts.chunk_log,
        "functions": stack.opts.functions,
        "auth": stack.auth_config,
        "queues": dict(stack.template.queue_urls) if stack.template else {},
    }


def save(stack: Stack) -> None:
    stack.opts.state_file.write_text(json.dumps(snapshot(stack), indent=2))
    env = functions.container_environments(stack)
    stack.sam_local_env_file().write_text(json.dumps(env, indent=2))


def load(stack_dir: Path) -> dict[str, Any] | None:
    """The state a running stack wrote (None: not up, or not up yet)."""
    path = stack_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None
