"""Endpoints as boto3 resolves them, `.env` files as users write them, and the model a
request may name."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstream.exceptions import ModelNotAllowed
from llmstream.settings import Settings, choose_model
from localcloud import dotenv_file, endpoints

pytestmark = pytest.mark.unit


def test_each_service_has_botocores_own_variable() -> None:
    assert endpoints.env_var("dynamodb") == "AWS_ENDPOINT_URL_DYNAMODB"
    assert endpoints.env_var("secretsmanager") == "AWS_ENDPOINT_URL_SECRETS_MANAGER"
    assert endpoints.env_var("cognito-idp") == "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"


def test_a_services_own_endpoint_wins_over_the_general_one() -> None:
    env = {"AWS_ENDPOINT_URL": "http://general", "AWS_ENDPOINT_URL_DYNAMODB": "http://ddb"}
    assert endpoints.endpoint("dynamodb", env) == "http://ddb"
    assert endpoints.endpoint("sqs", env) == "http://general"
    assert endpoints.endpoint("sqs", {}) is None  # AWS itself
    assert endpoints.configured(env) and not endpoints.configured({})


def test_configured_endpoints_can_be_ignored_as_boto3_allows() -> None:
    env = {"AWS_ENDPOINT_URL": "http://general", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert endpoints.endpoint("sqs", env) is None


def test_a_client_goes_where_the_environment_says() -> None:
    env = {"AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_DYNAMODB": "http://ddb:2"}
    assert endpoints.client("dynamodb", env).meta.endpoint_url == "http://ddb:2"
    assert endpoints.client("sqs", env).meta.endpoint_url == "http://general:1"


def test_credentials_never_reach_the_state_file() -> None:
    env = {"AWS_ENDPOINT_URL": "http://x", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
    assert endpoints.public(env) == {"AWS_ENDPOINT_URL": "http://x"}


def test_a_dotenv_file_saved_on_windows_reads_clean(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"# c\r\nA=1\r\nB = ' spaced ' \r\nexport C=3\r\nEMPTY=\r\n")
    assert dotenv_file.read(path) == {"A": "1", "B": "spaced", "C": "3", "EMPTY": ""}
    assert dotenv_file.read(tmp_path / "missing") == {}


def test_the_environment_wins_over_the_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".env"
    path.write_text("LLMSTREAM_T1=file\nLLMSTREAM_T2=file\n")
    monkeypatch.setenv("LLMSTREAM_T1", "shell")
    monkeypatch.delenv("LLMSTREAM_T2", raising=False)
    assert dotenv_file.load(path) == ["LLMSTREAM_T2"]
    import os

    assert os.environ["LLMSTREAM_T1"] == "shell" and os.environ["LLMSTREAM_T2"] == "file"
    monkeypatch.delenv("LLMSTREAM_T2")


def settings(allowed: str) -> Settings:
    return Settings.model_construct(model_id="gpt-4o-mini", allowed_models=allowed)


def test_a_request_gets_the_default_model_unless_another_is_offered() -> None:
    assert choose_model(settings(""), None) == "gpt-4o-mini"
    assert choose_model(settings(""), "gpt-4o-mini") == "gpt-4o-mini"
    with pytest.raises(ModelNotAllowed, match="choose one of: gpt-4o-mini, gpt-4o"):
        choose_model(settings("gpt-4o"), "o3")
    assert choose_model(settings("gpt-4o, o3"), "o3") == "o3"
    assert choose_model(settings("*"), "anything") == "anything"
