"""Redis for the Redis Streams chunk log (`--chunk-log redis`): a redis-server of the
stack's own, in memory like a cache node, or the one REDIS_URL names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from localcloud.options import Options, StartError
from localcloud.supervisor import Component, Supervisor


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


def ports(opts: Options) -> dict[str, int]:
    """The port the stack's own redis-server binds (none when REDIS_URL names one)."""
    return {} if os.environ.get("REDIS_URL") else {"redis": opts.ports.redis}


def start(opts: Options, supervisor: Supervisor) -> tuple[str, str]:
    """Redis's URL, and a line saying which one."""
    url = os.environ.get("REDIS_URL")
    if url:
        if not redis_answers(url):
            raise StartError(f"REDIS_URL {url} does not answer PING")
        return url, f"using {url} (REDIS_URL)"
    url = f"redis://{opts.host}:{opts.ports.redis}/0"
    supervisor.start(
        Component(
            "redis",
            redis_server_command(opts.host, opts.ports.redis, opts.dir),
            ready=lambda: redis_answers(url),
            store=True,
        )
    )
    return url, f"redis-server at {url}"
