"""``python -m localcloud up|poll|aws|fake-openai|frontend``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from localcloud.template import ROOT


def say(msg: str) -> None:
    print(msg, flush=True)  # noqa: T201 - this is the command's output


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from localcloud.up import Options, Ports, Stack, StartError

    opts = Options(
        stack=args.stack,
        ports=Ports(
            aws=args.aws_port,
            api=args.api_port,
            stream=args.stream_port,
            openai=args.openai_port,
            frontend=args.frontend_port,
            redis=args.redis_port,
        ),
        workers=args.workers,
        fake_tokens=args.fake_tokens,
        fake_tps=args.fake_tps,
        fake_ttft_ms=args.fake_ttft_ms,
        chunk_log=args.chunk_log,
    )

    stack = Stack(opts, progress=say)
    signal.signal(signal.SIGTERM, _interrupt)  # `run.sh stop` and CI end it like Ctrl-C
    try:
        stack.start()
        u = stack.urls
        say("")
        say("llmstream is up:")
        say(f"  chat page     {u['frontend']}")
        say(f"  api           {u['api']}   (POST /chat, GET /chat/{{task_id}}, /docs)")
        say(f"  stream        {u['stream']}   (GET /stream/{{task_id}}?token=...)")
        say(f"  aws endpoint  {u['aws']}")
        if "redis" in u:
            say(f"  chunk log     {u['redis']}   (Redis Streams)")
        if "openai" in u:
            say(f"  fake openai   {u['openai']}")
        say(f"  logs          {opts.dir / 'logs'}")
        say("")
        say(
            f"try: curl -X POST {u['api']}/chat -H 'content-type: application/json' "
            '-d \'{"message":"hi"}\''
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
        stack.stop()
        say("stopped.")


def _state(stack: str) -> dict[str, object] | None:
    path = ROOT / ".localcloud" / stack / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _status(args: argparse.Namespace) -> int:
    import httpx

    state = _state(args.stack)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running")
        return 3
    say(f"{args.stack}: up (pid {state['pid']}, {state['workers']} worker(s) per queue)")
    for name, pid in state["pids"].items():  # type: ignore[attr-defined]
        say(f"  {name:<9} pid {pid:<7} {'running' if _alive(pid) else 'DEAD'}")
    urls = state["urls"]
    try:
        full = httpx.get(f"{urls['api']}/health/full", timeout=10).json()  # type: ignore[index]
    except httpx.HTTPError as e:
        say(f"  health: api unreachable ({e})")
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
    state = _state(args.stack)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running")
        return 0
    pid = int(state["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    say(f"{args.stack}: stopped")
    return 0


def _scale(args: argparse.Namespace) -> int:
    state = _state(args.stack)
    if state is None or not _alive(int(state["pid"])):  # type: ignore[call-overload]
        say(f"{args.stack}: not running; start it with --workers {args.workers}")
        return 1
    (ROOT / ".localcloud" / args.stack / "workers").write_text(str(args.workers))
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        state = _state(args.stack)
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
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _frontend(args: argparse.Namespace) -> int:
    import uvicorn

    from localcloud.components import frontend_app

    app = frontend_app(Path(args.directory), json.loads(args.config))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _poll(args: argparse.Namespace) -> int:
    from localcloud.components import run_poller

    run_poller(Path(args.spec))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcloud", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack until Ctrl-C")
    up.add_argument("--stack", default="llmstream-local")
    up.add_argument("--aws-port", type=int, default=4566)
    up.add_argument("--api-port", type=int, default=8007)
    up.add_argument("--stream-port", type=int, default=8008)
    up.add_argument("--openai-port", type=int, default=8009)
    up.add_argument("--frontend-port", type=int, default=3000)
    up.add_argument("--redis-port", type=int, default=6380)
    up.add_argument(
        "--chunk-log",
        choices=["dynamodb", "redis"],
        default="dynamodb",
        help="where answers are written and streamed from (redis: Redis Streams)",
    )
    up.add_argument("--workers", type=int, default=4, help="concurrent local worker invocations")
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
    scale = sub.add_parser("scale", help="set the number of local workers of a running stack")
    scale.add_argument("workers", type=int)
    scale.add_argument("--stack", default="llmstream-local")
    scale.set_defaults(fn=_scale)

    poll = sub.add_parser("poll", help="SQS event source poller (spec from `up`)")
    poll.add_argument("--spec", required=True)
    poll.set_defaults(fn=_poll)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # `up` prints its own progress; per-request client logs would drown it.
    for noisy in ("httpx", "botocore", "localcloud.provision"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
