"""The model a local stack's worker calls: the fake OpenAI server (no key, deterministic
answers; see fake_openai.py), or a real one when OPENAI_BASE_URL or OPENAI_API_KEY is set
(OpenAI, or any OpenAI-compatible API), and the key in the secret the worker reads."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from localcloud.options import Options
from localcloud.supervisor import Component, Supervisor
from localcloud.template import LocalTemplate

FAKE_KEY = "sk-local-fake"


def real_model() -> bool:
    """A real model is configured (OpenAI, or an OpenAI-compatible API): no fake one."""
    return bool(
        os.environ.get("OPENAI_BASE_URL", "").strip()
        or os.environ.get("OPENAI_API_KEY", "").strip()
    )


def components(opts: Options) -> list[Component]:
    """The model servers the stack runs itself: none for a real model. They need nothing
    else, so they start beside the emulators."""
    if real_model():
        return []
    host, port = opts.host, opts.ports.openai
    fake = Component(
        "openai",
        [
            *(sys.executable, "-m", "localcloud", "fake-openai"),
            *("--host", host, "--port", str(port)),
            *("--tokens", str(opts.fake_tokens), "--tps", str(opts.fake_tps)),
            *("--ttft-ms", str(opts.fake_ttft_ms)),
        ],
        health_url=f"http://{host}:{port}/health",
    )
    return [fake]


@dataclass
class Model:
    """What the functions are given to reach the model, and where it is."""

    env: dict[str, str] = field(default_factory=dict)  # OPENAI_BASE_URL, where one is set
    url: str | None = None
    fake: bool = False


def ready(opts: Options, supervisor: Supervisor, template: LocalTemplate, secrets: Any) -> Model:
    """Wait for the model servers the stack started; put the key where the worker reads it."""
    if real_model():
        # A real model: OpenAI, or any OpenAI-compatible API (a local Ollama or vLLM server
        # needs no key, but the SDK wants one).
        base_url = os.environ.get("OPENAI_BASE_URL", "").strip()
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        _store_key(template, secrets, key or "sk-no-key-needed")
        return Model({"OPENAI_BASE_URL": base_url} if base_url else {}, base_url or None)
    for c in components(opts):
        if c.name not in supervisor.procs:
            supervisor.spawn(c)
        supervisor.wait(c.name)
    url = f"http://{opts.host}:{opts.ports.openai}/v1"
    _store_key(template, secrets, FAKE_KEY)
    return Model({"OPENAI_BASE_URL": url}, url, fake=True)


def describe(model: Model) -> str:
    if model.fake:
        return f"fake OpenAI at {model.url}"
    return f"{model.url or 'the OpenAI API'} (OPENAI_BASE_URL / OPENAI_API_KEY)"


def _store_key(template: LocalTemplate, secrets: Any, key: str) -> None:
    """Put the key in the secret the worker reads it from, as `./run.sh deploy` does."""
    for spec in template.functions().values():
        arn = spec.environment.get("OPENAI_API_KEY_SECRET_ARN")
        if arn:
            secrets.put_secret_value(SecretId=arn, SecretString=key)
