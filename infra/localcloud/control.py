"""How `./run.sh scale N` asks a stack running in the foreground for another worker count:
a file in the stack's state folder that its supervisor's loop takes and answers by
restarting the pollers (then `state.json` says the new count)."""

from __future__ import annotations

from pathlib import Path


def _file(stack_dir: Path) -> Path:
    return stack_dir / "workers"


def ask_workers(stack_dir: Path, workers: int) -> None:
    _file(stack_dir).write_text(str(workers))


def take_workers(stack_dir: Path) -> int | None:
    """The worker count asked for since the last call, if any (the request is consumed)."""
    path = _file(stack_dir)
    if not path.exists():
        return None
    text = path.read_text().strip()
    path.unlink()
    return int(text) if text else None


def clear(stack_dir: Path) -> None:
    _file(stack_dir).unlink(missing_ok=True)
