"""The OpenAI-compatible API (/v1) of the stream function: routes.py, and the OpenAI shapes
of requests (schemas.py), answers (responses.py, completions.py) and errors (errors.py),
all from one fold of a task's chunk log (replay.py)."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Serve /v1 on ``app``, with its errors in OpenAI's shape."""
    from llmstream.v1 import errors
    from llmstream.v1.routes import router

    errors.install(app)
    app.include_router(router)
