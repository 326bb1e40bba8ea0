"""`./run.sh start`: a stack in the foreground, from the command line's options, with the
banner that says where everything is, until Ctrl-C (or SIGTERM from `./run.sh stop`); it
takes `./run.sh scale` requests while it runs."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import time
from pathlib import Path

from localcloud import control, dotenv_file
from localcloud.commands import DEMO_USER, say
from localcloud.options import Options, Ports
from localcloud.up import Stack, StartError


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def options(args: argparse.Namespace) -> Options:
    ports = Ports(**{f.name: getattr(args, f"{f.name}_port") for f in dataclasses.fields(Ports)})
    return Options(
        stack=args.stack,
        ports=ports.offset(args.port_offset),
        aws=args.aws,
        workers=args.workers,
        fake_tokens=args.fake_tokens,
        fake_tps=args.fake_tps,
        fake_ttft_ms=args.fake_ttft_ms,
        chunk_log=args.chunk_log,
        functions=args.functions,
        parameters=dict(p.split("=", 1) for p in args.parameter),
    )


def banner(stack: Stack, demo_name: str, demo_password: str) -> None:
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
    say(f"  logs          {stack.opts.dir / 'logs'}")
    say(f"  sign in as    {demo_name} / {demo_password}   (in the admins group)")
    say("")
    say("try: TOKEN=$(./run.sh token demo | tail -1)")
    say(
        f'     curl -X POST {u["api"]}/chat -H "authorization: Bearer $TOKEN" '
        "-H 'content-type: application/json' -d '{\"message\":\"hi\"}'"
    )
    say("Ctrl-C stops everything.")


def up(args: argparse.Namespace) -> int:
    env_file = Path(args.env_file)
    taken = dotenv_file.load(env_file)  # before anything reads the environment
    if taken:
        say(f"{env_file.name}: {', '.join(sorted(taken))}")
    opts = options(args)
    stack = Stack(opts, progress=say)
    signal.signal(signal.SIGTERM, _interrupt)  # `run.sh stop` and CI end it like Ctrl-C
    try:
        stack.start()
        # A user to sign in with, in the operators' group so the dashboard opens too (this
        # is the developer's own machine); `./run.sh token NAME` makes ordinary users.
        demo = stack.ensure_user(DEMO_USER, admin=True)
        banner(stack, demo.name, demo.password)
        control.clear(opts.dir)
        while True:
            time.sleep(1)
            stack.check()
            wanted = control.take_workers(opts.dir)
            if wanted is not None:
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
