"""Lambda-like execution environments for the local event source: one OS process each.

Lambda runs each execution environment apart, reuses it warm for invocation after
invocation, and when one dies (out of memory, a crash, a runtime exit) fails only the
invocation it was running. Here an environment is a child process of the poller that
imports the handler once (the init phase) and then runs one invocation at a time, sent
over a pipe; the poller keeps at most MaximumConcurrency of them. The function's
MemorySize is enforced as Lambda does, by stopping an environment whose memory grows past
it, and so is its Timeout. A dead environment's invocation fails (its messages come back
after their visibility timeout, as on Lambda) and the next invocation starts a fresh one.

    python -m localcloud runtime --handler llmstream.worker.handler ...   (the child side)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_CHECK_SECONDS = 0.05  # how often the parent looks at a running environment's memory


class EnvironmentDied(RuntimeError):
    """The invocation failed because its environment ended (or was ended)."""


@dataclass
class Environment:
    """The parent's handle on one execution environment."""

    function_name: str
    memory_mb: int
    proc: subprocess.Popen[bytes]
    requests: Any  # file object: invocations to the child
    results: Any  # file object: results from the child
    invocations: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for f in (self.requests, self.results):
            with contextlib.suppress(OSError):
                f.close()

    def invoke(self, event: dict[str, Any], timeout_seconds: float) -> Any:
        """Run one invocation; its result, or EnvironmentDied (crash, memory, timeout)."""
        request_id = f"{os.getpid()}-{self.pid}-{self.invocations}"
        self.invocations += 1
        started = time.monotonic()
        deadline = started + timeout_seconds
        line = json.dumps({"event": event, "deadline_in": timeout_seconds, "id": request_id})
        try:
            self.requests.write(line.encode() + b"\n")
            self.requests.flush()
        except (BrokenPipeError, ValueError) as e:
            self.kill()
            raise EnvironmentDied(f"environment {self.pid} was gone before the invocation") from e
        limit = self.memory_mb * 1024 * 1024
        peak = 0
        try:
            process = psutil.Process(self.pid)
        except psutil.NoSuchProcess as e:
            self.kill()
            raise EnvironmentDied(f"environment {self.pid} was gone before the invocation") from e
        while True:
            ready, _, _ = select.select([self.results], [], [], _CHECK_SECONDS)
            if ready:
                answer = self.results.readline()
                if not answer:  # EOF: the process ended mid-invocation
                    code = self.proc.wait()
                    raise EnvironmentDied(
                        f"environment {self.pid} exited ({_describe(code)}) mid-invocation"
                    )
                break
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue  # the EOF on the results pipe tells the rest
            peak = max(peak, rss)
            if rss > limit:
                self.kill()
                raise EnvironmentDied(
                    f"environment {self.pid} used {rss // 2**20} MB of its "
                    f"{self.memory_mb} MB (MemorySize): stopped, as Lambda stops it"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise EnvironmentDied(
                    f"Task timed out after {timeout_seconds:.2f} seconds (environment {self.pid})"
                )
        reply = json.loads(answer)
        log.info(
            "REPORT RequestId: %s Duration: %.2f ms Memory Size: %d MB Max Memory Used: %d MB",
            request_id,
            (time.monotonic() - started) * 1000,
            self.memory_mb,
            peak // 2**20,
        )
        if "error" in reply:
            raise HandlerError(reply["error"])
        return reply["result"]


class HandlerError(RuntimeError):
    """The handler raised; the environment lives on (as on Lambda)."""


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


_INITS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


class EnvironmentPool:
    """A function's execution environments: reused warm, at most ``size`` at once."""

    def __init__(
        self,
        *,
        handler: str,
        function_name: str,
        memory_mb: int,
        timeout_seconds: int,
        size: int,
        env: dict[str, str] | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.handler = handler
        self._state_file = state_file
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        self.size = size
        self._env = env
        self._idle: list[Environment] = []
        self._busy: dict[int, float] = {}  # pid -> when its invocation started
        self._work: dict[int, list[str]] = {}  # pid -> the message bodies it runs
        self._all: dict[int, Environment] = {}
        self._lock = threading.Lock()
        self.started = 0
        self.deaths = 0
        self._write_state()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        """The function, as the event source invokes it."""
        bodies = [str(r.get("body", ""))[:200] for r in event.get("Records", [])]
        try:
            env = self._take(bodies)
        except EnvironmentDied as e:
            with self._lock:
                self.deaths += 1
            log.error("function %s: %s", self.function_name, e)
            raise
        try:
            result = env.invoke(event, self.timeout_seconds)
        except EnvironmentDied as e:
            with self._lock:
                self.deaths += 1
                self._busy.pop(env.pid, None)
                self._all.pop(env.pid, None)
            self._write_state()
            log.error("function %s: %s", self.function_name, e)
            raise
        except BaseException:
            self._give_back(env)
            raise
        self._give_back(env)
        return result

    def pids(self) -> list[int]:
        with self._lock:
            return [pid for pid, env in self._all.items() if env.alive()]

    def close(self) -> None:
        with self._lock:
            envs = list(self._all.values())
            self._all.clear()
            self._idle.clear()
        for env in envs:
            env.kill()

    def _take(self, bodies: list[str]) -> Environment:
        with self._lock:
            while self._idle:
                env = self._idle.pop()
                if env.alive():
                    self._busy[env.pid] = time.time()
                    self._work[env.pid] = bodies
                    break
                self._all.pop(env.pid, None)  # died while idle
            else:
                env = None
        if env is None:
            env = self._spawn()
            with self._lock:
                self._all[env.pid] = env
                self._busy[env.pid] = time.time()
                self._work[env.pid] = bodies
        self._write_state()
        return env

    def _give_back(self, env: Environment) -> None:
        with self._lock:
            self._busy.pop(env.pid, None)
            if env.alive():
                self._idle.append(env)
            else:
                self._all.pop(env.pid, None)
        self._write_state()

    def _write_state(self) -> None:
        """Which environments exist and which run an invocation since when (for `status`
        and for tests that kill a running one)."""
        if self._state_file is None:
            return
        with self._lock:
            state = {
                "function": self.function_name,
                "started": self.started,
                "deaths": self.deaths,
                "environments": [
                    {
                        "pid": pid,
                        "busy_since": self._busy.get(pid),
                        "messages": self._work.get(pid, []) if pid in self._busy else [],
                    }
                    for pid in self._all
                ],
            }
        tmp = self._state_file.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_file)

    def _spawn(self) -> Environment:
        # On Lambda every environment inits on hardware of its own; here they share the
        # machine's cores, and 80 imports at once (a burst of load) would each take minutes
        # and starve the answers already running. So at most a core's worth init at once:
        # each waits its turn and then inits in about the time Lambda would take.
        with _INITS:
            return self._start()

    def _start(self) -> Environment:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localcloud",
                "runtime",
                "--handler",
                self.handler,
                "--function-name",
                self.function_name,
                "--memory",
                str(self.memory_mb),
                "--fds",
                f"{req_r},{res_w}",
                "--parent",
                str(os.getpid()),
            ],
            pass_fds=(req_r, res_w),
            env=self._env,
            stdin=subprocess.DEVNULL,
        )
        os.close(req_r)
        os.close(res_w)
        with self._lock:
            self.started += 1
        env = Environment(
            function_name=self.function_name,
            memory_mb=self.memory_mb,
            proc=proc,
            requests=os.fdopen(req_w, "wb"),
            results=os.fdopen(res_r, "rb"),
        )
        # The init phase: the child imports the handler, then says it is ready. Lambda
        # gives init 10 s and, past that, tries it again within the first invocation's
        # timeout; on a busy laptop an import can take longer than 10 s, so the limit here
        # is the function's timeout. One that dies in it fails the waiting invocation.
        started = time.monotonic()
        ready, _, _ = select.select([env.results], [], [], self.timeout_seconds)
        line = env.results.readline() if ready else b""
        if not line:
            env.kill()
            raise EnvironmentDied(f"environment {proc.pid} failed its init phase")
        log.info(
            "function %s: new execution environment %d (Init Duration: %.2f ms)",
            self.function_name,
            proc.pid,
            (time.monotonic() - started) * 1000,
        )
        return env


def serve(handler_path: str, function_name: str, memory_mb: int, fds: str, parent: int) -> int:
    """The child: init (import the handler), then one invocation per request line."""
    _die_with_parent(parent)
    from localcloud.poller import LambdaContext, load_handler

    req_fd, res_fd = (int(x) for x in fds.split(","))
    requests = os.fdopen(req_fd, "rb")
    results = os.fdopen(res_fd, "wb")
    handler = load_handler(handler_path)  # the init phase
    results.write(b'{"ready": true}\n')
    results.flush()
    for line in requests:
        request = json.loads(line)
        context = LambdaContext(
            function_name=function_name,
            memory_limit_in_mb=memory_mb,
            timeout_seconds=float(request["deadline_in"]),
            aws_request_id=request["id"],
        )
        try:
            reply = {"result": handler(request["event"], context)}
        except Exception as e:  # the handler's error: the invocation fails, the env lives
            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"}
        results.write(json.dumps(reply, default=str).encode() + b"\n")
        results.flush()
    return 0


def _die_with_parent(parent: int) -> None:
    """The kernel ends this process when the poller ends, however it ends."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before the prctl took
        os._exit(1)
