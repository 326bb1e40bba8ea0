"""``python -m localcloud up|poll|aws|fake-openai|frontend|token|status|stop|scale``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from localcloud import TARGETS
from localcloud.template import ROOT
from localcloud.users import UserPool


def say(msg: str) -> None:
    print(msg, flush=True)  # noqa: T201 - this is the command's output


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from localcloud import dotenv_file
    from localcloud.up import Options, Ports, Stack, StartError

    env_file = Path(args.env_file)
    taken = dotenv_file.load(env_file)  # before anything reads the environment
    if taken:
        say(f"{env_file.name}: {', '.join(sorted(taken))}")

    opts = Options(
        stack=args.stack,
        ports=Ports(
            aws=args.aws_port + args.port_offset,
            api=args.api_port + args.port_offset,
            stream=args.stream_port + args.port_offset,
            openai=args.openai_port + args.port_offset,
            frontend=args.frontend_port + args.port_offset,
            redis=args.redis_port + args.port_offset,
            dynamodb=args.dynamodb_port + args.port_offset,
            moto=args.moto_port + args.port_offset,
            invoke=args.invoke_port + args.port_offset,
        ),
        aws=args.aws,
        workers=args.workers,
        fake_tokens=args.fake_tokens,
        fake_tps=args.fake_tps,
        fake_ttft_ms=args.fake_ttft_ms,
        chunk_log=args.chunk_log,
        functions=args.functions,
        parameters=dict(p.split("=", 1) for p in args.parameter),
    )

    stack = Stack(opts, progress=say)
    signal.signal(signal.SIGTERM, _interrupt)  # `run.sh stop` and CI end it like Ctrl-C
    try:
        stack.start()
        # A user to sign in with, in the operators' group so the dashboard opens too (this
        # is the developer's own machine); `./run.sh token NAME` makes ordinary users.
        demo = stack.ensure_user(DEMO_USER, admin=True)
        u = stack.urls
        say("")
        say("llmstream is up:")
        say(f"  chat page     {u['frontend']}")
        say(f"  api           {u['api']}   (POST /chat, GET /chat/{{task_id}}, /docs)")
        say(f"  stream        {u['stream']}   (GET /stream/{{task_id}}?token=...)")
        for service, url in sorted(stack.endpoints.items()):
            say(f"  {service:<13} {url or 'AWS'}")
        if "redis" in u:
            say(f"  chunk log     {u['redis']}   (Redis Streams)")
        if "openai" in u:
            say(f"  fake openai   {u['openai']}")
        if "invoke" in u:
            say(f"  lambda invoke {u['invoke']}   (sam local start-lambda: the worker)")
        if "model" in u:
            say(f"  model         {u['model']}   (OPENAI_BASE_URL)")
        say(f"  logs          {opts.dir / 'logs'}")
        say(f"  sign in as    {demo.name} / {demo.password}   (in the admins group)")
        say("")
        say("try: TOKEN=$(./run.sh token demo | tail -1)")
        say(
            f'     curl -X POST {u["api"]}/chat -H "authorization: Bearer $TOKEN" '
            "-H 'content-type: application/json' -d '{\"message\":\"hi\"}'"
        )
        say("Ctrl-C stops everything.")
        control = opts.dir / "workers"
        control.unlink(missing_ok=True)
        while True:
            time.sleep(1)
            stack.check()
            if control.exists():  # `localcloud scale N` asks for another worker count
                wanted = int(control.read_text().strip() or opts.workers)
                control.unlink()
                say(f"scaling the local workers to {wanted} ...")
                stack.scale(wanted)
                say(f"{wanted} worker(s) per queue")
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0
    except StartError as e:
        say(f"error: {e}")
        return 1
    finally:
        started = bool(stack.procs)
        stack.stop()
        if started:
            say("stopped.")


DEMO_USER = "demo"


def _dir(args: argparse.Namespace) -> Path:
    """The stack's state folder: .localcloud/<stack>, or --state-dir (tests' stacks)."""
    explicit = getattr(args, "state_dir", None)
    return Path(explicit) if explicit else ROOT / ".localcloud" / args.stack


def _state(args: argparse.Namespace) -> dict[str, object] | None:
    path = _dir(args) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pool(args: argparse.Namespace, state: dict[str, Any]) -> UserPool:
    """The running stack's user pool, as its state file names it."""
    from localcloud import endpoints

    auth = state["auth"]
    cognito = endpoints.client("cognito-idp", state["aws"]["env"])
    return UserPool(
        cognito=cognito,
        pool_id=auth["userPoolId"],
        client_id=auth["clientId"],
        passwords_file=_dir(args) / "users.json",
    )


def _token(args: argparse.Namespace) -> int:
    state = _state(args)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running; ./run.sh start first")
        return 1
    user = _pool(args, state).ensure_user(args.name, admin=args.admin)
    say(f"user {user.name} (password {user.password}){' in admins' if args.admin else ''}")
    say("access token (send it as: Authorization: Bearer <token>; it lasts an hour):")
    say(user.access_token)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _recorded(args: argparse.Namespace) -> list[Any]:
    """The stack's processes as its supervisor wrote them down (processes.json)."""
    from localcloud.processes import Recorded

    path = _dir(args) / "processes.json"
    if not path.exists():
        return []
    return [Recorded(**r) for r in json.loads(path.read_text())]


def _status(args: argparse.Namespace) -> int:
    import httpx

    recorded = _recorded(args)
    supervisor = next((r for r in recorded if r.name == "supervisor"), None)
    running = [r for r in recorded if r.name != "supervisor" and r.running()]
    state = _state(args)
    if supervisor is None or not supervisor.running():
        if running:
            say(
                f"{args.stack}: HALF-DEAD: its supervisor"
                f"{f' (pid {supervisor.pid})' if supervisor else ''} is gone, "
                f"{len(running)} component(s) still running; `./run.sh stop` ends them"
            )
            for r in running:
                say(f"  {r.name:<9} pid {r.pid:<7} running")
            return 1
        say(f"{args.stack}: not running")
        return 3
    if state is None:
        say(f"{args.stack}: starting (pid {supervisor.pid})")
        return 1
    say(f"{args.stack}: up (pid {state['pid']}, {state['workers']} worker(s) per queue)")
    for r in recorded:
        if r.name != "supervisor":
            say(f"  {r.name:<9} pid {r.pid:<7} {'running' if r.running() else 'DEAD'}")
    envs_file = _dir(args) / "poller-WorkerFunction.envs.json"
    if envs_file.exists():
        envs = json.loads(envs_file.read_text())
        busy = sum(1 for e in envs["environments"] if e["busy_since"])
        say(
            f"  worker environments: {len(envs['environments'])} ({busy} running an answer),"
            f" {envs['started']} started, {envs['deaths']} died"
        )
    urls = state["urls"]
    try:
        admin = _pool(args, state).ensure_user(DEMO_USER, admin=True)
        full = httpx.get(
            f"{urls['api']}/health/full",  # type: ignore[index]
            headers=admin.headers,
            timeout=10,
        ).json()
    except Exception as e:  # an unreachable api or user pool: say so, do not crash
        say(f"  health: unreachable ({type(e).__name__}: {e})")
        return 1
    say(f"  health: {full['status']}")
    for name, check in full["queues"].items():
        depth = check.get("depth") or {}
        say(
            f"  queue {name:<12} visible {depth.get('visible', '?'):<4} "
            f"in flight {depth.get('in_flight', '?')}"
        )
    return 0 if full["status"] == "ok" else 1


def _stop(args: argparse.Namespace) -> int:
    from localcloud.processes import end

    recorded = _recorded(args)
    supervisor = next((r for r in recorded if r.name == "supervisor"), None)
    if supervisor is not None and supervisor.running():
        os.kill(supervisor.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while supervisor.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if supervisor.running():
            os.kill(supervisor.pid, signal.SIGKILL)
    # Whatever is still running (a supervisor killed hard, or one that did not finish
    # stopping): only processes that are still the ones it started.
    left = end([r for r in recorded if r.name != "supervisor"])
    for name in ("state.json", "processes.json"):
        (_dir(args) / name).unlink(missing_ok=True)
    if supervisor is None or (not left and not supervisor.running() and not recorded):
        say(f"{args.stack}: not running")
    elif left:
        say(
            f"{args.stack}: stopped {len(left)} leftover process(es) "
            f"({', '.join(r.name for r in left)})"
        )
    else:
        say(f"{args.stack}: stopped")
    return 0


def _scale(args: argparse.Namespace) -> int:
    state = _state(args)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running; start it with --workers {args.workers}")
        return 1
    (ROOT / ".localcloud" / args.stack / "workers").write_text(str(args.workers))
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        state = _state(args)
        if state and state.get("workers") == args.workers:
            say(f"{args.stack}: {args.workers} worker(s) per queue")
            return 0
        time.sleep(0.3)
    say("scaling did not finish; see the logs")
    return 1


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

    from localcloud.components import frontend_app

    app = frontend_app(Path(args.directory), json.loads(args.config))
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )
    return 0


def _poll(args: argparse.Namespace) -> int:
    from localcloud.components import run_poller

    run_poller(Path(args.spec))
    return 0


def _lambda_image(args: argparse.Namespace) -> int:
    from localcloud import samlocal

    try:
        say(samlocal.prebuild(_dir(args), say))
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


def _metrics(args: argparse.Namespace) -> int:
    from localcloud import metrics

    logs = _dir(args) / "logs"
    if not logs.is_dir():
        say(f"{args.stack}: no logs yet; ./run.sh start first")
        return 1
    sys.stdout.write(metrics.report(logs, args.since) + "\n")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    from localcloud import dlq, endpoints

    state = _state(args)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running; ./run.sh start first")
        return 1
    queues: dict[str, str] = state["queues"]  # type: ignore[assignment]
    sqs = endpoints.client("sqs", state["aws"]["env"])  # type: ignore[index]
    dlq_url = queues["DeadLetterQueue"]
    if args.action == "redrive":
        sources = {k: v for k, v in queues.items() if k != "DeadLetterQueue"}
        moved = dlq.redrive(sqs, dlq_url, sources, sources["DefaultQueue"])
        say(f"moved {moved} message(s) back to their queues")
        return 0
    letters = dlq.peek(sqs, dlq_url)
    say(f"{len(letters)} message(s) in the dead-letter queue")
    for letter in letters:
        sent = time.strftime("%H:%M:%S", time.localtime(letter.sent_at))
        source = (letter.source_queue or "?").rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        say(
            f"  {letter.message_id}  sent {sent}  from {source}  task {letter.task_id or '-'}"
            f"  {letter.reason or 'failed every delivery (redrive policy)'}"
        )
    return 0


def _runtime(args: argparse.Namespace) -> int:
    from localcloud.runtime import serve

    return serve(args.handler, args.function_name, args.memory, args.fds, args.parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack until Ctrl-C")
    up.add_argument("--stack", default="llmstream-local")
    up.add_argument(
        "--port-offset", type=int, default=0, help="add this to every port (a second stack)"
    )
    up.add_argument("--aws-port", type=int, default=4566)
    up.add_argument("--api-port", type=int, default=8007)
    up.add_argument("--stream-port", type=int, default=8008)
    up.add_argument("--openai-port", type=int, default=8009)
    up.add_argument("--frontend-port", type=int, default=3000)
    up.add_argument("--redis-port", type=int, default=6380)
    up.add_argument("--dynamodb-port", type=int, default=8000, help="DynamoDB Local")
    up.add_argument("--moto-port", type=int, default=4567, help="moto beside LocalStack")
    up.add_argument(
        "--invoke-port", type=int, default=3001, help="the Lambda Invoke API (--lambda sam)"
    )
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
    up.add_argument("--fake-tokens", type=int, default=60)
    up.add_argument("--fake-tps", type=float, default=50.0)
    up.add_argument("--fake-ttft-ms", type=float, default=200.0)
    up.set_defaults(fn=_up)

    aws = sub.add_parser("aws", help="the AWS endpoint alone (moto server)")
    aws.add_argument("--host", default="127.0.0.1")
    aws.add_argument("--port", type=int, default=4566)
    aws.set_defaults(fn=_aws)

    fake = sub.add_parser("fake-openai", help="the fake OpenAI server alone")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8009)
    fake.add_argument("--tokens", type=int, default=60)
    fake.add_argument("--tps", type=float, default=50.0)
    fake.add_argument("--ttft-ms", type=float, default=200.0)
    fake.set_defaults(fn=_fake_openai)

    front = sub.add_parser("frontend", help="serve frontend/ with a config.json")
    front.add_argument("--host", default="127.0.0.1")
    front.add_argument("--port", type=int, default=3000)
    front.add_argument("--directory", default=str(ROOT / "frontend"))
    front.add_argument("--config", required=True, help="config.json content")
    front.set_defaults(fn=_frontend)

    for verb, fn, text in (
        ("status", _status, "is the stack up, and how is it"),
        ("stop", _stop, "stop a running stack"),
    ):
        cmd = sub.add_parser(verb, help=text)
        cmd.add_argument("--stack", default="llmstream-local")
        cmd.set_defaults(fn=fn)
    token = sub.add_parser("token", help="sign a local user in (created if missing)")
    token.add_argument("name")
    token.add_argument("--admin", action="store_true", help="in the admins group (operators)")
    token.add_argument("--stack", default="llmstream-local")
    token.add_argument("--state-dir", help=argparse.SUPPRESS)
    token.set_defaults(fn=_token)
    scale = sub.add_parser("scale", help="set the number of local workers of a running stack")
    scale.add_argument("workers", type=int)
    scale.add_argument("--stack", default="llmstream-local")
    scale.set_defaults(fn=_scale)

    dead = sub.add_parser("dlq", help="list the dead-letter queue, or redrive it")
    dead.add_argument("action", nargs="?", choices=["list", "redrive"], default="list")
    dead.add_argument("--stack", default="llmstream-local")
    dead.add_argument("--state-dir", help=argparse.SUPPRESS)
    dead.set_defaults(fn=_dlq)

    metrics = sub.add_parser("metrics", help="the stack's metrics, from its functions' logs")
    metrics.add_argument("--stack", default="llmstream-local")
    metrics.add_argument("--since", type=float, help="only the last N minutes")
    metrics.add_argument("--state-dir", help=argparse.SUPPRESS)
    metrics.set_defaults(fn=_metrics)

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
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
