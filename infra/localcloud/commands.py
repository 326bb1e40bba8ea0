"""The commands that talk to a running stack, found by its state folder: `token`,
`status`, `stop`, `scale`, `dlq` and `metrics` (`./run.sh <command>`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcloud import control
from localcloud.template import ROOT

if TYPE_CHECKING:
    from localcloud.processes import Recorded
    from localcloud.users import UserPool

DEMO_USER = "demo"


def say(msg: str) -> None:
    print(msg, flush=True)  # noqa: T201 - this is the command's output


def stack_dir(args: argparse.Namespace) -> Path:
    """The stack's state folder: .localcloud/<stack>, or --state-dir (tests' stacks)."""
    explicit = getattr(args, "state_dir", None)
    return Path(explicit) if explicit else ROOT / ".localcloud" / args.stack


def _state(args: argparse.Namespace) -> dict[str, Any] | None:
    from localcloud import state

    return state.load(stack_dir(args))


def _running(args: argparse.Namespace, hint: str = "./run.sh start first") -> dict[str, Any]:
    """The running stack's state; NotRunning (saying so, with ``hint``) if there is none."""
    state = _state(args)
    if state is None or not _alive(int(state["pid"])):
        raise NotRunning(f"{args.stack}: not running; {hint}")
    return state


class NotRunning(Exception):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pool(args: argparse.Namespace, state: dict[str, Any]) -> UserPool:
    """The running stack's user pool, as its state file names it."""
    from localcloud import endpoints
    from localcloud.users import UserPool

    auth = state["auth"]
    return UserPool(
        cognito=endpoints.client("cognito-idp", state["aws"]["env"]),
        pool_id=auth["userPoolId"],
        client_id=auth["clientId"],
        passwords_file=stack_dir(args) / "users.json",
    )


def token(args: argparse.Namespace) -> int:
    user = _pool(args, _running(args)).ensure_user(args.name, admin=args.admin)
    say(f"user {user.name} (password {user.password}){' in admins' if args.admin else ''}")
    say("access token (send it as: Authorization: Bearer <token>; it lasts an hour):")
    say(user.access_token)
    return 0


def _recorded(args: argparse.Namespace) -> list[Recorded]:
    """The stack's processes as its supervisor wrote them down (processes.json)."""
    from localcloud.processes import Recorded

    path = stack_dir(args) / "processes.json"
    if not path.exists():
        return []
    return [Recorded(**r) for r in json.loads(path.read_text())]


def status(args: argparse.Namespace) -> int:
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
    envs_file = stack_dir(args) / "poller-WorkerFunction.envs.json"
    if envs_file.exists():
        envs = json.loads(envs_file.read_text())
        busy = sum(1 for e in envs["environments"] if e["busy_since"])
        say(
            f"  worker environments: {len(envs['environments'])} ({busy} running an answer),"
            f" {envs['started']} started, {envs['deaths']} died"
        )
    try:
        admin = _pool(args, state).ensure_user(DEMO_USER, admin=True)
        full = httpx.get(
            f"{state['urls']['api']}/health/full", headers=admin.headers, timeout=10
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


def stop(args: argparse.Namespace) -> int:
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
        (stack_dir(args) / name).unlink(missing_ok=True)
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


def scale(args: argparse.Namespace) -> int:
    _running(args, f"start it with --workers {args.workers}")
    control.ask_workers(stack_dir(args), args.workers)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        state = _state(args)
        if state and state.get("workers") == args.workers:
            say(f"{args.stack}: {args.workers} worker(s) per queue")
            return 0
        time.sleep(0.3)
    say("scaling did not finish; see the logs")
    return 1


def metrics(args: argparse.Namespace) -> int:
    from localcloud import metrics

    logs = stack_dir(args) / "logs"
    if not logs.is_dir():
        say(f"{args.stack}: no logs yet; ./run.sh start first")
        return 1
    sys.stdout.write(metrics.report(logs, args.since) + "\n")
    return 0


def dlq(args: argparse.Namespace) -> int:
    from localcloud import dlq, endpoints

    state = _running(args)
    queues: dict[str, str] = state["queues"]
    sqs = endpoints.client("sqs", state["aws"]["env"])
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
