"""`.env`: settings for `./run.sh start` and `./run.sh deploy` kept in a file, as both older
services had them (`.env.example` lists every one).

Parsed by python-dotenv (quotes, comments, `export`); every value is stripped of
whitespace and carriage returns, so a file saved on Windows (CRLF) works. The process's
own environment wins over the file, as in docker compose.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values


def read(path: Path) -> dict[str, str]:
    """The file's settings (nothing if it does not exist), keys and values stripped."""
    if not path.is_file():
        return {}
    values = dotenv_values(path, encoding="utf-8")
    return {
        k.strip(): v.strip().strip("\r").strip()
        for k, v in values.items()
        if k and k.strip() and v is not None
    }


def load(path: Path) -> list[str]:
    """Put the file's settings into this process's environment where it has none of its
    own; return the names taken from the file (never their values: they may be keys)."""
    taken = []
    for key, value in read(path).items():
        if key not in os.environ:
            os.environ[key] = value
            taken.append(key)
    return taken
