"""The template's functions on a local stack: each one's environment (built here, and only
here, for a process or for a `sam local` container), the api and stream apps under
uvicorn, and the worker behind its event-source pollers."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from localcloud import endpoints, samlocal
from localcloud.supervisor import Component

if TYPE_CHECKING:
    from localcloud.up import Stack

# Logical ids of the template's functions, and how each runs locally.
API_FUNCTION = "ApiFunction"
STREAM_FUNCTION = "StreamFunction"
STREAM_APP = "llmstream.stream:app"  # what the stream function's run.sh starts under LWA


def environ() -> dict[str, str]:
    """This process's environment without its AWS endpoint settings: a child gets the
    stack's own, never a per-service variable left in the shell that would send one service
    elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_ENDPOINT_URL") and k != "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
    }


def environment(stack: Stack, logical_id: str) -> dict[str, str]:
    """A function's environment as a process of this machine: the template's values
    resolved to the stack's resources, its endpoints, model and chunk log."""
    assert stack.template is not None
    spec = stack.template.functions()[logical_id]
    env = {
        **environ(),
        **stack.aws_env,
        **spec.environment,
        **stack.model.env,
        **stack.chunk_env,
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
        "LOCALCLOUD_ACCOUNT_ID": stack.account,
        # X-Ray has no daemon locally.
        "POWERTOOLS_TRACE_DISABLED": "true",
        **stack.opts.extra_env,
    }
    env.update(stack.opts.function_endpoints)
    env.update(cors(stack, logical_id))
    if not env.get("AUTH_JWKS_URL") and stack.pool is not None:
        env["AUTH_JWKS_URL"] = jwks_url(stack)
    env.pop("AWS_LWA_INVOKE_MODE", None)
    env.pop("AWS_LAMBDA_EXEC_WRAPPER", None)
    stack.env[logical_id] = env
    return env


def cors(stack: Stack, logical_id: str) -> dict[str, str]:
    """The CORS methods and headers the cloud answers for this function, from the template
    (the HTTP API's for the api, the function URL's for the stream function): the local
    apps answer the same, so the page on its own port meets the cloud's rules."""
    assert stack.template is not None
    tpl = stack.template
    if logical_id == API_FUNCTION:
        rules = tpl.props("HttpApi")["Body"]["x-amazon-apigateway-cors"]
        methods, headers = rules["allowMethods"], rules["allowHeaders"]
    elif logical_id == STREAM_FUNCTION:
        rules = tpl.props(f"{STREAM_FUNCTION}Url")["Cors"]
        methods, headers = rules["AllowMethods"], rules["AllowHeaders"]
    else:
        return {}
    return {"CORS_ALLOW_METHODS": ",".join(methods), "CORS_ALLOW_HEADERS": ",".join(headers)}


def container_environments(stack: Stack) -> dict[str, dict[str, str]]:
    """`sam local --env-vars` file: each function's environment as this stack runs it
    (template values resolved to the local resources, the local AWS endpoint), as its
    container reaches them (by the host's alias, through the relay: `--lambda sam`)."""
    assert stack.template is not None
    out: dict[str, dict[str, str]] = {}
    for logical_id, spec in stack.template.functions().items():
        env = {
            **spec.environment,
            # an emulator's placeholder credentials; never a real account's
            **(stack.aws_env if stack.target != "external" else endpoints.public(stack.aws_env)),
            **stack.chunk_env,
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        if "OPENAI_BASE_URL" in stack.model.env:
            env["OPENAI_BASE_URL"] = stack.model.env["OPENAI_BASE_URL"]
        if not env.get("AUTH_JWKS_URL") and stack.pool is not None:
            env["AUTH_JWKS_URL"] = jwks_url(stack)
        env.update(stack.opts.extra_env)
        out[logical_id] = samlocal.in_container(env)
    return out


def jwks_url(stack: Stack) -> str:
    """The issuer is Cognito's form (moto signs it so); the keys are the emulator's."""
    assert stack.pool is not None and stack.aws is not None
    return f"{stack.aws.cognito_url}/{stack.pool.pool_id}/.well-known/jwks.json"


def uvicorn_app(stack: Stack, name: str, logical_id: str, port: int) -> Component:
    """An HTTP function as Lambda's web adapter runs it: its ASGI app under uvicorn."""
    assert stack.template is not None
    if logical_id == STREAM_FUNCTION:
        app = STREAM_APP
    else:
        app = stack.template.functions()[logical_id].handler.rpartition(".")[0] + ":app"
    host = stack.opts.host
    return Component(
        name,
        [
            *(sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port)),
            *("--no-access-log", "--timeout-graceful-shutdown", "3"),
        ],
        env=environment(stack, logical_id),
        health_url=f"http://{host}:{port}/health",
    )


def pollers(stack: Stack) -> list[Component]:
    """One poller process per function with event sources: Lambda's SQS event source
    mappings (batch size, window, concurrency, partial failures), each invocation in an
    execution environment of its own, or through `sam local`'s Invoke API."""
    tpl, opts = stack.template, stack.opts
    assert tpl is not None
    functions = tpl.functions()
    by_function: dict[str, list[dict[str, Any]]] = {}
    for esm in tpl.event_sources():
        fn = functions[esm.function]
        cap = esm.maximum_concurrency or opts.workers
        if opts.ignore_concurrency_caps:
            cap = opts.workers
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
                "concurrency": min(cap, opts.workers),
                "region": tpl.region,
                **(
                    {"invoke_url": stack.urls["invoke"], "invoke_function": esm.function}
                    if opts.functions == "sam"
                    else {}
                ),
            }
        )
    out = []
    for function, specs in by_function.items():
        spec_path = opts.dir / f"poller-{function}.json"
        ready_file = spec_path.with_suffix(".ready")
        ready_file.unlink(missing_ok=True)
        spec_path.with_suffix(".envs.json").unlink(missing_ok=True)  # an earlier run's
        spec_path.write_text(json.dumps(specs, indent=2))
        out.append(
            Component(
                "worker" if len(by_function) == 1 else f"worker-{function}",
                [sys.executable, "-m", "localcloud", "poll", "--spec", str(spec_path)],
                env=environment(stack, function),
                ready=ready_file.exists,
            )
        )
    return out


def start(stack: Stack) -> str:
    """The api, stream and worker functions (the api and worker in Lambda containers with
    `--lambda sam`), once each answers."""
    from localcloud import lambda_containers, page

    o, sup = stack.opts, stack.supervisor
    # The page needs only the functions' URLs: it starts while they do.
    if "frontend" not in sup.procs:
        sup.spawn(page.component(stack))
    apps = [("stream", STREAM_FUNCTION, o.ports.stream)]
    if o.functions == "sam":
        api = lambda_containers.start(stack)  # the stream function stays here (see README)
    else:
        apps.insert(0, ("api", API_FUNCTION, o.ports.api))
        api = None
    started = [uvicorn_app(stack, name, logical, port) for name, logical, port in apps]
    for c in started:
        sup.spawn(c)
    stack.urls["api"] = f"http://{o.host}:{o.ports.api}"
    stack.urls["stream"] = f"http://{o.host}:{o.ports.stream}"
    sup.start(*pollers(stack))
    for name in [*([api] if api else []), *(c.name for c in started)]:
        sup.wait(name)
    where = " (api and worker in Lambda containers)" if o.functions == "sam" else ""
    return f"api {stack.urls['api']}, stream {stack.urls['stream']}, {o.workers} worker(s){where}"
