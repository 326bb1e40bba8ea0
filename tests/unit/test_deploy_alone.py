"""The deploy tool stands alone (a deploy needs nothing of the local cloud), takes its
OPENAI_API_KEY from the environment, else from .env, and leaves an AllowedOrigin the
deployer names alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmstream_deploy.__main__ import openai_key
from llmstream_deploy.origin import named_by_deployer
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


@pytest.mark.parametrize(
    ("samconfig", "sam_args", "named"),
    [
        ('[default.deploy.parameters]\nparameter_overrides = "Stage=dev"\n', [], False),
        ('[default.deploy.parameters]\nparameter_overrides = "AllowedOrigin=*"\n', [], True),
        ('[default.global.parameters]\nparameter_overrides = ["AllowedOrigin=*"]\n', [], True),
        ('[prod.deploy.parameters]\nparameter_overrides = "AllowedOrigin=*"\n', [], False),
        (None, ["--parameter-overrides", "Stage=dev AllowedOrigin=https://c.example"], True),
        (None, ["--parameter-overrides=AllowedOrigin=*"], True),
        (None, ["--no-confirm-changeset"], False),
    ],
)
def test_the_origin_is_the_deployers_where_samconfig_or_the_command_line_names_it(
    tmp_path: Path, samconfig: str | None, sam_args: list[str], named: bool
) -> None:
    path = tmp_path / "samconfig.toml"
    if samconfig is not None:
        path.write_text(samconfig, encoding="utf-8")
    assert named_by_deployer(path, "default", sam_args) is named
