"""The chat page and dashboard on a local stack: frontend/ served as S3 and CloudFront
serve it, with the ``config.json`` that deploy writes in the cloud (the functions' URLs and
where users sign in) and the distribution's Content-Security-Policy, so the browser tests
run the page under the policy it gets in the cloud."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from localcloud.supervisor import Component

if TYPE_CHECKING:
    from localcloud.template import LocalTemplate
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
    csp = []
    if stack.template is not None:
        endpoints = [f"http://{o.host}:{o.ports.api}", f"http://{o.host}:{o.ports.stream}"]
        endpoints.append(stack.auth_config["endpoint"])
        csp = ["--csp", content_security_policy(stack.template, endpoints)]
    return Component(
        "frontend",
        [
            *(sys.executable, "-m", "localcloud", "frontend"),
            *("--host", o.host, "--port", str(o.ports.frontend), "--config", config),
            *csp,
        ],
        health_url=f"{url}/config.json",
    )


def content_security_policy(tpl: LocalTemplate, endpoints: list[str]) -> str:
    """The page's Content-Security-Policy as template.yaml gives it to CloudFront, with the
    local endpoints in connect-src instead of the cloud's (the HTTP API, the stream
    function URL, Cognito)."""
    config = tpl.props("FrontendHeadersPolicy")["ResponseHeadersPolicyConfig"]
    policy = config["SecurityHeadersConfig"]["ContentSecurityPolicy"]["ContentSecurityPolicy"]
    text = policy["Fn::Sub"] if isinstance(policy, dict) else policy
    directives = []
    for directive in text.split(";"):
        name, *sources = directive.split()
        if name == "connect-src":
            sources = [s for s in sources if s.startswith("'")] + endpoints
        directives.append(" ".join([name, *sources]))
    return "; ".join(directives)


def start(stack: Stack) -> str:
    """The page, once it serves its config (it may have started with the functions)."""
    c = component(stack)
    if c.name not in stack.supervisor.procs:
        stack.supervisor.spawn(c)
    stack.supervisor.wait(c.name)
    stack.urls["frontend"] = url = f"http://{stack.opts.host}:{stack.opts.ports.frontend}"
    return url


def frontend_app(directory: Path, config: dict[str, Any], csp: str | None = None) -> Starlette:
    async def config_json(request: Any) -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if csp:
            response.headers["Content-Security-Policy"] = csp
        return response

    return Starlette(
        routes=[
            Route("/config.json", config_json),
            Mount("/", StaticFiles(directory=directory, html=True)),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=security_headers)],
    )
