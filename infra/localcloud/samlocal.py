"""`./run.sh start --lambda sam`: the api and worker functions in Lambda containers.

`sam local start-api` serves the api function and `sam local start-lambda` the Lambda
Invoke API for the worker, which the stack's SQS poller calls; each invocation runs in a
container of its own with the function's Timeout and MemorySize, as on Lambda. What that
needs, made here from registries this machine reaches:

- a Docker engine: the one running, or ``dockerd`` started as one of the stack's
  components (root only), so it stops with the stack;
- a Lambda Python 3.12 image: Debian bookworm from ``debootstrap``, a CPython 3.12 of this
  machine, the runtime interface client (``infra/lock/lambda-runtime.txt``) in
  /var/runtime, the functions' locked dependencies in /opt/python (where a layer's go),
  and the runtime's /var/runtime/bootstrap. SAM adds its runtime interface emulator and
  mounts functions/ as /var/task. The image is tagged with a hash of all of that, so it
  is built once per change;
- x86_64 functions (template parameter ``Architecture``): the host's own instruction set,
  no emulation;
- the way back from the containers: they reach this machine on the bridge's host address
  only, so the functions' endpoints name ``host.docker.internal`` (mapped to it), and a
  relay on that address (see relay.py) forwards to the servers on loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from localcloud import processes
from localcloud.template import ROOT

# Each build is a repository of its own (IMAGE-<hash>): SAM names the image it derives
# (with its emulator added) after the repository alone, so a new build under the same
# repository would run SAM's stale derivative of the old one.
IMAGE = "llmstream-lambda-python3.12"
RECIPE = 1  # bump when build_image changes what goes into the image
SUITE = "bookworm"
MIRROR = os.environ.get("LLMSTREAM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The shared libraries CPython's extension modules load (ssl, sqlite3, pyexpat, readline).
PACKAGES = [
    "libssl3",
    "libsqlite3-0",
    "libexpat1",
    "libncursesw6",
    "libreadline8",
    "ca-certificates",
]
RUNTIME_LOCK = ROOT / "infra" / "lock" / "lambda-runtime.txt"
FUNCTIONS_LOCK = ROOT / "functions" / "requirements.txt"
LOCK_FILE = ROOT / ".localcloud" / "lambda-image.lock"
HOST_ALIAS = "host.docker.internal"
ARCHITECTURE = "x86_64"
# What the Python runtime's bootstrap does: awslambdaric runs the handler. The paths and
# variables are Lambda's own (its python3.12 image's).
BOOTSTRAP = textwrap.dedent(
    """\
    #!/bin/sh
    export PYTHONPATH="/var/task:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
    LD_LIBRARY_PATH="/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/var/task:/var/task/lib:/opt/lib"
    exec /var/lang/bin/python3.12 -m awslambdaric "$_HANDLER"
    """
)
IMAGE_ENV = {
    "LAMBDA_TASK_ROOT": "/var/task",
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
    "LANG": "C.UTF-8",
    "TZ": ":UTC",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin",
}
# The functions' variables that name a server the function itself calls: inside a
# container these must name the host by its alias. (STREAM_BASE_URL is for the viewer's
# browser, which stays on this machine.)
_CALLED = ("AWS_ENDPOINT_URL", "QUEUE_URL_", "DEAD_LETTER_QUEUE_URL", "OPENAI_BASE_URL")
_CALLED_EXACT = ("AUTH_JWKS_URL", "REDIS_URL")


class SamLocalError(RuntimeError):
    pass


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


# ---------------------------------------------------------------------------- the engine
def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20).returncode == 0
        )
    except subprocess.TimeoutExpired:
        return False


def dockerd_command(state_dir: Path) -> list[str]:
    """The engine as a component of the stack (it stops with the stack)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise SamLocalError(
            "no Docker engine: dockerd is not installed (Debian's docker.io; "
            "`./run.sh start --lambda sam` installs it)"
        )
    if os.geteuid() != 0:
        raise SamLocalError(
            "no Docker engine running, and only root can start one: start dockerd, or run as root"
        )
    return [dockerd, "--pidfile", str(state_dir / "dockerd.pid")]


def bridge_address() -> str:
    """This machine's address on Docker's default bridge: where containers reach it."""
    out = _run(["docker", "network", "inspect", "bridge", "--format", "{{json .}}"], timeout=20)
    if out.returncode != 0:
        raise SamLocalError(f"docker network inspect bridge: {out.stderr.strip()}")
    network = json.loads(out.stdout)
    for config in (network.get("IPAM") or {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    # A bridge the engine addressed itself lists no gateway: its interface's address is.
    name = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    for address in psutil.net_if_addrs().get(name, []):
        if address.family == socket.AF_INET:
            return str(address.address)
    raise SamLocalError(f"Docker's bridge {name} has no IPv4 address")


# ---------------------------------------------------------------------------- the image
def python312() -> Path:
    """The installation prefix of a CPython 3.12 on this machine (pyenv's, or on PATH)."""
    candidates = [shutil.which("python3.12")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(pyenv_root / "versions" / "3.12*" / "bin" / "python3.12")))
    for exe in candidates:
        if not exe:
            continue
        out = _run([exe, "-c", "import sys; print(sys.base_prefix)"], timeout=30)
        if out.returncode == 0:
            prefix = Path(out.stdout.strip())
            if (prefix / "bin" / "python3.12").exists():
                return prefix
    raise SamLocalError("no CPython 3.12 here (the template's runtime): pyenv install 3.12")


def image_tag(python: Path) -> str:
    """The image's tag: a hash of everything that goes into it."""
    h = hashlib.sha256()
    recipe = [RECIPE, SUITE, MIRROR, PACKAGES, BOOTSTRAP, IMAGE_ENV, ARCHITECTURE, str(python)]
    h.update(json.dumps(recipe).encode())
    for lock in (RUNTIME_LOCK, FUNCTIONS_LOCK):
        h.update(lock.read_bytes())
    version = _run([str(python / "bin" / "python3.12"), "-VV"], timeout=30).stdout
    h.update(version.encode())
    return f"{IMAGE}-{h.hexdigest()[:16]}:latest"


def image_exists(tag: str) -> bool:
    return _run(["docker", "image", "inspect", tag], timeout=30).returncode == 0


@contextlib.contextmanager
def building() -> Iterator[None]:
    """One image build (and the engine it runs on) at a time on this machine: a stack
    waits for `./run.sh test`'s build ahead of it instead of building beside it."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_image(progress: Callable[[str], None] = lambda _m: None) -> tuple[str, bool]:
    """The image's tag, built first if missing; and whether it was built now. (Hold
    ``building()`` around it and the engine it needs.)"""
    python = python312()
    tag = image_tag(python)
    if image_exists(tag):
        return tag, False
    build_image(tag, python, progress)
    remove_other_images(tag)
    return tag, True


def prebuild(state_dir: Path, progress: Callable[[str], None]) -> str:
    """`python -m localcloud lambda-image`: the image built ahead of its first use (on a
    Docker engine started for the build alone if none runs). Returns its tag."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with building():
        dockerd = None
        if not engine_answers():
            dockerd = subprocess.Popen(
                dockerd_command(state_dir),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=processes.preexec,  # it ends with this process, however it ends
            )
            deadline = time.monotonic() + 90
            while not engine_answers():
                if dockerd.poll() is not None or time.monotonic() > deadline:
                    raise SamLocalError("dockerd did not start")
                time.sleep(0.5)
        try:
            tag, _built = ensure_image(progress)
        finally:
            if dockerd is not None:
                dockerd.terminate()
                dockerd.wait(60)
    return tag


def remove_other_images(keep: str) -> None:
    """Earlier builds, and what SAM derived from them: images are hundreds of MB."""
    listed = _run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], timeout=60)
    repo = keep.split(":")[0]
    stale = [
        ref
        for ref in listed.stdout.split()
        if ref.split(":")[0].startswith(IMAGE) and ref.split(":")[0] != repo
    ]
    for ref in stale:
        remove_containers(ref)
    if stale:
        _run(["docker", "rmi", "--force", *stale], timeout=300)


def build_image(tag: str, python: Path, progress: Callable[[str], None]) -> None:
    for tool in ("debootstrap", "docker"):
        if shutil.which(tool) is None:
            raise SamLocalError(f"{tool} not found: `./run.sh start --lambda sam` installs it")
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise SamLocalError(f"uv not found beside {sys.executable}: ./run.sh install")
    with tempfile.TemporaryDirectory(prefix="llmstream-image-") as tmp:
        root = Path(tmp) / "rootfs"
        progress(f"building {tag}: Debian {SUITE} (debootstrap, minbase)")
        step = _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            timeout=900,
        )
        if step.returncode != 0:
            raise SamLocalError(f"debootstrap failed:\n{step.stdout[-2000:]}{step.stderr[-2000:]}")
        progress(f"building {tag}: Python {python.name} in /var/lang, the locked packages")
        lang = root / "var" / "lang"
        shutil.copytree(
            python,
            lang,
            symlinks=True,
            ignore=shutil.ignore_patterns(
                "test", "tests", "idlelib", "tkinter", "turtledemo", "__pycache__", "*.a"
            ),
        )
        site = lang / "lib" / "python3.12" / "site-packages"
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir(parents=True)
        for target, lock in (
            (root / "var" / "runtime", RUNTIME_LOCK),
            (root / "opt" / "python", FUNCTIONS_LOCK),
        ):
            step = _run(
                [
                    str(uv),
                    "pip",
                    "install",
                    "--quiet",
                    "--require-hashes",
                    "--only-binary",
                    ":all:",
                    "--python-version",
                    "3.12",
                    "--python-platform",
                    f"{ARCHITECTURE}-manylinux_2_28",
                    "--target",
                    str(target),
                    "-r",
                    str(lock),
                ],
                timeout=900,
            )
            if step.returncode != 0:
                raise SamLocalError(f"installing {lock.name} failed:\n{step.stderr[-2000:]}")
        (root / "var" / "task").mkdir(parents=True, exist_ok=True)
        bootstrap = root / "var" / "runtime" / "bootstrap"
        bootstrap.write_text(BOOTSTRAP)
        bootstrap.chmod(0o755)
        progress(f"building {tag}: docker import")
        changes = [f"ENV {k}={v}" for k, v in IMAGE_ENV.items()]
        changes += ["WORKDIR /var/task", 'ENTRYPOINT ["/var/runtime/bootstrap"]']
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        imported = subprocess.run(
            [*argv, "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=600
        )
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise SamLocalError(f"docker import failed: {imported.stderr.strip()}")


# ---------------------------------------------------------------------------- functions
def in_container(env: dict[str, str]) -> dict[str, str]:
    """A function's variables as its container needs them: every server it calls on this
    machine named by the host's alias instead of loopback."""
    out = {}
    for key, value in env.items():
        if key.startswith(_CALLED) or key in _CALLED_EXACT:
            value = to_host_alias(value)
        out[key] = value
    return out


def to_host_alias(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        return url
    netloc = HOST_ALIAS + (f":{parts.port}" if parts.port else "")
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit(parts._replace(netloc=netloc))


def loopback_ports(urls: list[str]) -> list[int]:
    """The loopback ports among ``urls``: what the relay must carry."""
    ports = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname in ("127.0.0.1", "localhost") and parts.port:
            ports.add(parts.port)
    return sorted(ports)


def sam() -> str:
    found = shutil.which("sam", path=str(Path(sys.executable).parent)) or shutil.which("sam")
    if found is None:
        raise SamLocalError("sam (aws-sam-cli) is not installed: ./run.sh install")
    return found


def command(
    kind: str,
    *,
    host: str,
    port: int,
    env_file: Path,
    image: str,
    parameters: dict[str, str],
) -> list[str]:
    """``sam local start-api`` or ``start-lambda`` on the source template: code mounted from
    functions/, the image above for every function, x86_64, the host's alias mapped."""
    overrides = {**parameters, "Architecture": ARCHITECTURE}
    return [
        sam(),
        "local",
        kind,
        "--template",
        str(ROOT / "template.yaml"),
        "--host",
        host,
        "--port",
        str(port),
        "--env-vars",
        str(env_file),
        "--parameter-overrides",
        " ".join(f"{k}={_quote(v)}" for k, v in overrides.items()),
        "--invoke-image",
        image,
        "--skip-pull-image",
        "--add-host",
        f"{HOST_ALIAS}:host-gateway",
    ]


def _quote(value: str) -> str:
    return (
        value if value and all(c.isalnum() or c in "-_.:/*" for c in value) else json.dumps(value)
    )


def remove_containers(image: str) -> None:
    """Remove every container of ``image`` (SAM's derived images included)."""
    if not engine_answers():
        return
    ids = _run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], timeout=30).stdout.split()
    if ids:
        _run(["docker", "rm", "-f", *ids], timeout=60)
