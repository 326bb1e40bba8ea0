"""The chat page and dashboard on a local stack: frontend/ served as S3 and CloudFront
serve it, with the ``config.json`` that deploy writes in the cloud (the functions' URLs and
where users sign in)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from localcloud.supervisor import Component

if TYPE_CHECKING:
    from localcloud.up import Stack


def component(stack: Stack) -> Component:
    o = stack.opts
    config = json.dumps(
        {
            "apiUrl": f"http://{o.host}:{o.ports.api}",
            "streamUrl": f"http://{o.host}:{o.ports.stream}",
            "auth": stack.auth_config,
        }
    )
    url = f"http://{o.host}:{o.ports.frontend}"
    return Component(
        "frontend",
        [
            *(sys.executable, "-m", "localcloud", "frontend"),
            *("--host", o.host, "--port", str(o.ports.frontend), "--config", config),
        ],
        health_url=f"{url}/config.json",
    )


def start(stack: Stack) -> str:
    """The page, once it serves its config (it may have started with the functions)."""
    c = component(stack)
    if c.name not in stack.supervisor.procs:
        stack.supervisor.spawn(c)
    stack.supervisor.wait(c.name)
    stack.urls["frontend"] = url = f"http://{stack.opts.host}:{stack.opts.ports.frontend}"
    return url


def frontend_app(directory: Path, config: dict[str, Any]) -> Starlette:
    async def config_json(request: Any) -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/config.json", config_json),
            Mount("/", StaticFiles(directory=directory, html=True)),
        ]
    )
