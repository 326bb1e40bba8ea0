"""``python -m localcloud COMMAND``: the command line of the local cloud. `up` runs a
stack (foreground.py); `token`, `status`, `stop`, `scale`, `dlq`, `metrics` talk to a
running one (commands.py); `aws`, `fake-openai`, `frontend`, `poll`, `runtime`, `relay`
are the stack's own servers, which its supervisor starts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from localcloud import TARGETS, commands
from localcloud.commands import say, stack_dir
from localcloud.options import Options, Ports
from localcloud.template import ROOT


def _up(args: argparse.Namespace) -> int:
    from localcloud import foreground

    return foreground.up(args)


def _aws(args: argparse.Namespace) -> int:
    from localcloud.emulator import serve

    serve(args.host, args.port)
    return 0


def _fake_openai(args: argparse.Namespace) -> int:
    import uvicorn

    from localcloud.fake_openai import Behaviour, create_app

    app = create_app(Behaviour(tokens=args.tokens, tps=args.tps, ttft_ms=args.ttft_ms))
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )
    return 0


def _frontend(args: argparse.Namespace) -> int:
    import uvicorn

    from localcloud.page import frontend_app

    app = frontend_app(Path(args.directory), json.loads(args.config), args.csp)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )
    return 0


def _poll(args: argparse.Namespace) -> int:
    from localcloud.poller_process import run_poller

    run_poller(Path(args.spec))
    return 0


def _lambda_image(args: argparse.Namespace) -> int:
    from localcloud import samlocal

    try:
        say(samlocal.prebuild(stack_dir(args), say))
        return 0
    except samlocal.SamLocalError as e:
        say(f"error: {e}")
        return 1


def _parameter(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def _relay(args: argparse.Namespace) -> int:
    from localcloud import relay

    return relay.run(args.listen, args.to, args.ports)


def _runtime(args: argparse.Namespace) -> int:
    from localcloud.runtime import serve

    return serve(args.handler, args.function_name, args.memory, args.fds, args.parent)


def _pace(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The fake model's pace (tokens an answer, tokens a second, time to first token)."""
    o = Options()
    parser.add_argument(f"{prefix}tokens", type=int, default=o.fake_tokens)
    parser.add_argument(f"{prefix}tps", type=float, default=o.fake_tps)
    parser.add_argument(f"{prefix}ttft-ms", type=float, default=o.fake_ttft_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack until Ctrl-C")
    up.add_argument("--stack", default="llmstream-local")
    up.add_argument(
        "--port-offset", type=int, default=0, help="add this to every port (a second stack)"
    )
    port_help = {
        "dynamodb": "DynamoDB Local",
        "moto": "moto beside LocalStack",
        "invoke": "the Lambda Invoke API (--lambda sam)",
    }
    for name, port in dataclasses.asdict(Ports()).items():
        up.add_argument(f"--{name}-port", type=int, default=port, help=port_help.get(name))
    up.add_argument(
        "--lambda",
        dest="functions",
        choices=["local", "sam"],
        default="local",
        help="how the api and worker functions run: local (a process per execution "
        "environment, no Docker) or sam (Lambda containers under `sam local`: needs a "
        "Docker engine, which root can start)",
    )
    up.add_argument(
        "--aws",
        choices=["auto", *TARGETS],
        default="auto",
        help="where the AWS services run: moto (the default), dynamodb-local (moto with "
        "DynamoDB Local), localstack (LocalStack with DynamoDB Local; sign-in on moto), or "
        "external (what AWS_ENDPOINT_URL[_<SERVICE>] say; AWS itself if nothing); auto: "
        "external if those variables are set, else moto",
    )
    up.add_argument(
        "--chunk-log",
        choices=["dynamodb", "redis"],
        default="dynamodb",
        help="where answers are written and streamed from (redis: Redis Streams)",
    )
    up.add_argument("--workers", type=int, default=4, help="concurrent local worker invocations")
    up.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_parameter,
        help="a template parameter, e.g. WorkerTimeout=60 (repeatable)",
    )
    up.add_argument(
        "--env-file",
        default=str(ROOT / ".env"),
        help="settings read before starting, where the environment has none (see .env.example)",
    )
    _pace(up, "--fake-")
    up.set_defaults(fn=_up)

    aws = sub.add_parser("aws", help="the AWS endpoint alone (moto server)")
    aws.add_argument("--host", default="127.0.0.1")
    aws.add_argument("--port", type=int, default=4566)
    aws.set_defaults(fn=_aws)

    fake = sub.add_parser("fake-openai", help="the fake OpenAI server alone")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8009)
    _pace(fake, "--")
    fake.set_defaults(fn=_fake_openai)

    front = sub.add_parser("frontend", help="serve frontend/ with a config.json")
    front.add_argument("--host", default="127.0.0.1")
    front.add_argument("--port", type=int, default=3000)
    front.add_argument("--directory", default=str(ROOT / "frontend"))
    front.add_argument("--config", required=True, help="config.json content")
    front.add_argument("--csp", help="the Content-Security-Policy header of every response")
    front.set_defaults(fn=_frontend)

    for verb, fn, text in (
        ("status", commands.status, "is the stack up, and how is it"),
        ("stop", commands.stop, "stop a running stack"),
    ):
        cmd = sub.add_parser(verb, help=text)
        cmd.add_argument("--stack", default="llmstream-local")
        cmd.set_defaults(fn=fn)
    token = sub.add_parser("token", help="sign a local user in (created if missing)")
    token.add_argument("name")
    token.add_argument("--admin", action="store_true", help="in the admins group (operators)")
    token.add_argument("--stack", default="llmstream-local")
    token.add_argument("--state-dir", help=argparse.SUPPRESS)
    token.set_defaults(fn=commands.token)
    scale = sub.add_parser("scale", help="set the number of local workers of a running stack")
    scale.add_argument("workers", type=int)
    scale.add_argument("--stack", default="llmstream-local")
    scale.set_defaults(fn=commands.scale)

    dead = sub.add_parser("dlq", help="list the dead-letter queue, or redrive it")
    dead.add_argument("action", nargs="?", choices=["list", "redrive"], default="list")
    dead.add_argument("--stack", default="llmstream-local")
    dead.add_argument("--state-dir", help=argparse.SUPPRESS)
    dead.set_defaults(fn=commands.dlq)

    metrics = sub.add_parser("metrics", help="the stack's metrics, from its functions' logs")
    metrics.add_argument("--stack", default="llmstream-local")
    metrics.add_argument("--since", type=float, help="only the last N minutes")
    metrics.add_argument("--state-dir", help=argparse.SUPPRESS)
    metrics.set_defaults(fn=commands.metrics)

    runtime = sub.add_parser("runtime", help="one execution environment (the poller starts it)")
    runtime.add_argument("--handler", required=True)
    runtime.add_argument("--function-name", required=True)
    runtime.add_argument("--memory", type=int, required=True)
    runtime.add_argument("--fds", required=True)
    runtime.add_argument("--parent", type=int, required=True)
    runtime.set_defaults(fn=_runtime)

    poll = sub.add_parser("poll", help="SQS event source poller (spec from `up`)")
    poll.add_argument("--spec", required=True)
    poll.set_defaults(fn=_poll)

    relay = sub.add_parser("relay", help="the containers' bridge to loopback (`--lambda sam`)")
    relay.add_argument("--listen", required=True, help="the bridge's host address")
    relay.add_argument("--to", default="127.0.0.1")
    relay.add_argument("--ports", type=int, nargs="+", required=True)
    relay.set_defaults(fn=_relay)

    image = sub.add_parser(
        "lambda-image", help="build the functions' Lambda image for --lambda sam, if missing"
    )
    image.add_argument("--stack", default="llmstream-local")
    image.add_argument("--state-dir", help=argparse.SUPPRESS)
    image.set_defaults(fn=_lambda_image)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # `up` prints its own progress; per-request client logs would drown it.
    for noisy in ("httpx", "botocore", "localcloud.provision"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except commands.NotRunning as e:
        say(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
