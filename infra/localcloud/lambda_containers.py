"""`--lambda sam`: the api and worker functions in Lambda containers under `sam local`, as
components of the stack: a Docker engine (when none runs), the relay that lets containers
reach the stack on loopback, `sam local start-api` and `sam local start-lambda` (the
worker's pollers call its Invoke API). How the image is built: samlocal.py."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import httpx

from localcloud import functions, processes, samlocal
from localcloud.options import StartError
from localcloud.supervisor import Component

if TYPE_CHECKING:
    from localcloud.up import Stack


def engine(stack: Stack) -> str:
    """A Docker engine (started as a component if none runs) and the functions' image
    (built if missing)."""
    parts = []
    with samlocal.building():
        if samlocal.engine_answers():
            parts.append("Docker engine running")
        else:
            try:
                argv = samlocal.dockerd_command(stack.opts.dir)
            except samlocal.SamLocalError as e:
                raise StartError(str(e)) from None
            stack.supervisor.start(
                Component("docker", argv, ready=samlocal.engine_answers, timeout=90, store=True)
            )
            parts.append("dockerd started (stops with the stack)")
        try:
            stack.lambda_image, built = samlocal.ensure_image(stack.progress)
        except samlocal.SamLocalError as e:
            raise StartError(str(e)) from None
    parts.append(f"image {stack.lambda_image}{' (built)' if built else ''}")
    return ", ".join(parts)


def relay(stack: Stack) -> Component | None:
    """The containers' way to the stack's loopback ports, on the bridge's address."""
    called = [
        *(url for url in stack.endpoints.values() if url),
        *stack.model.env.values(),
        *([stack.urls["redis"]] if "redis" in stack.urls else []),
    ]
    ports = samlocal.loopback_ports(called)
    if not ports:
        return None
    try:
        bridge = samlocal.bridge_address()
    except samlocal.SamLocalError as e:
        raise StartError(str(e)) from None
    return Component(
        "relay",
        [
            *(sys.executable, "-m", "localcloud", "relay"),
            *("--listen", bridge, "--to", stack.opts.host, "--ports", *map(str, ports)),
        ],
        ready=lambda: all(processes.listens(stack.supervisor.procs["relay"].pid, p) for p in ports),
    )


def start(stack: Stack) -> str:
    """The relay, `sam local start-api` and `start-lambda`; returns the api's component
    name, ready once a request through it answers (each one starts a container)."""
    o, sup = stack.opts, stack.supervisor
    if "relay" in sup.procs:  # again (another chunk log): its ports may change
        sup.stop_gracefully(lambda name: name == "relay")
    bridge = relay(stack)
    if bridge is not None:
        sup.start(bridge)
    env_file = stack.sam_local_env_file()
    env_file.write_text(json.dumps(functions.container_environments(stack), indent=2))
    parameters = {
        "AllowedOrigin": "*",
        "EnableDirectMode": "true",
        **o.parameters,
        "LocalEndpointUrl": samlocal.to_host_alias(stack.aws_env["AWS_ENDPOINT_URL"]),
    }
    # SAM itself calls no AWS endpoint; it hands its credentials and region on.
    env = {
        **functions.environ(),
        **{k: v for k, v in stack.aws_env.items() if "ENDPOINT" not in k},
    }
    api_url = f"http://{o.host}:{o.ports.api}"

    def sam(name: str, kind: str, port: int) -> Component:
        argv = samlocal.command(
            kind,
            host=o.host,
            port=port,
            env_file=env_file,
            image=stack.lambda_image,
            parameters=parameters,
        )
        return Component(name, argv, env=env, port=port)

    api = sam("api", "start-api", o.ports.api)
    api.ready, api.timeout = lambda: _answers(f"{api_url}/health", 120), 240
    sup.spawn(api)
    sup.start(sam("worker-lambda", "start-lambda", o.ports.invoke))
    stack.urls["invoke"] = f"http://{o.host}:{o.ports.invoke}"
    return api.name


def _answers(url: str, timeout: float) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False
