"""The deploy tool stands alone (a deploy needs nothing of the local cloud), and takes its
OPENAI_API_KEY from the environment, else from .env."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmstream_deploy.__main__ import openai_key
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_deploy_tool_imports_nothing_of_the_local_cloud() -> None:
    imported = set()
    for path in (ROOT / "infra" / "deploy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {(path.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add((path.name, node.module.split(".")[0]))
    assert {(name, module) for name, module in imported if module == "localcloud"} == set()
    assert ("__main__.py", "llmstream_deploy") in imported  # the walk saw the imports


@pytest.mark.parametrize(
    ("dotenv", "environment", "key"),
    [
        # saved on Windows (CRLF), with a comment, `export`, quotes and blanks around the key
        (b"# c\r\nexport OPENAI_API_KEY = ' sk-file ' # mine\r\nOTHER=1\r\n", None, "sk-file"),
        (b"OPENAI_API_KEY=\r\n", None, None),
        (None, None, None),  # no .env at all
        (b"OPENAI_API_KEY=sk-file\n", "sk-shell", "sk-shell"),  # the environment wins
        (b"OPENAI_API_KEY=sk-file\n", "", "sk-file"),  # set but empty: the file's
    ],
)
def test_the_key_comes_from_the_environment_else_the_dotenv_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dotenv: bytes | None,
    environment: str | None,
    key: str | None,
) -> None:
    path = tmp_path / ".env"
    if dotenv is not None:
        path.write_bytes(dotenv)
    if environment is None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", environment)
    assert openai_key(path) == key
