from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmstream.models import ChatRequest, TaskMessage
from llmstream.settings import ApiSettings, Settings
from tests.conftest import FUNCTION_ENV

pytestmark = pytest.mark.unit

ENV = FUNCTION_ENV


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENV in the environment, as the template gives it to the functions; a test changes it
    further through its own monkeypatch (the same one), and every change ends with the test."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def test_chat_request_defaults_and_strip() -> None:
    req = ChatRequest.model_validate({"message": "  hi  "})
    assert req.message == "hi"
    assert req.priority == 0
    assert req.session_id is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "   "}, "message"),
        ({}, "message"),
        ({"message": "hi", "priority": 11}, "priority"),
        ({"message": "hi", "priority": -11}, "priority"),
        ({"message": "hi", "session_id": "has space"}, "session_id"),
        ({"message": "hi", "temperature": 3}, "temperature"),
        ({"message": "hi", "max_tokens": 0}, "max_tokens"),
        ({"message": "hi", "unknown": 1}, "unknown"),
        ({"message": "x" * 32_001}, "message"),
    ],
)
def test_bad_chat_requests_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChatRequest.model_validate(body)
    assert field in {str(loc) for e in err.value.errors() for loc in e["loc"]}


def test_task_message_refuses_a_foreign_body() -> None:
    with pytest.raises(ValidationError):
        TaskMessage.model_validate_json('{"task_id": "../etc"}')


@pytest.mark.usefixtures("settings_env")
def test_settings_fail_loudly_when_a_required_variable_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHUNKS_TABLE")
    with pytest.raises(ValidationError, match="chunks_table"):
        Settings()  # type: ignore[call-arg]


@pytest.mark.usefixtures("settings_env")
def test_settings_refuse_a_short_token_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TOKEN_SECRET", "short")
    with pytest.raises(ValidationError, match="stream_token_secret"):
        Settings()  # type: ignore[call-arg]


@pytest.mark.usefixtures("settings_env")
def test_the_cap_on_open_streams_is_on_by_default_and_0_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    got = Settings()  # type: ignore[call-arg]
    assert (got.user_max_streams, got.stream_lease_seconds) == (10, 60)
    monkeypatch.setenv("USER_MAX_STREAMS", "0")
    monkeypatch.setenv("STREAM_LEASE_SECONDS", "5")
    got = Settings()  # type: ignore[call-arg]
    assert (got.user_max_streams, got.stream_lease_seconds) == (0, 5)
    # A lease shorter than a renewal's round trip, or a negative cap, is refused at start
    for key, value in (("USER_MAX_STREAMS", "-1"), ("STREAM_LEASE_SECONDS", "1")):
        monkeypatch.setenv(key, value)
        with pytest.raises(ValidationError, match=key.lower()):
            Settings()  # type: ignore[call-arg]
        monkeypatch.setenv(key, "5")


@pytest.mark.usefixtures("settings_env")
def test_api_settings_need_the_stream_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="stream_base_url"):
        ApiSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "http://a, http://b")
    monkeypatch.setenv("STREAM_BASE_URL", "http://s")
    assert ApiSettings().cors_origins == ["http://a", "http://b"]  # type: ignore[call-arg]


@pytest.mark.usefixtures("settings_env")
def test_exactly_one_token_secret_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TOKEN_SECRET_ARN", "arn:aws:secretsmanager:::secret:x")
    with pytest.raises(ValidationError, match="exactly one"):
        Settings()  # type: ignore[call-arg]
    monkeypatch.delenv("STREAM_TOKEN_SECRET")
    assert Settings().stream_token_secret_arn  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("priority", "queue"),
    [
        (10, "high"),
        (5, "high"),
        (4, "default"),
        (0, "default"),
        (-4, "default"),
        (-5, "low"),
        (-10, "low"),
    ],
)
@pytest.mark.usefixtures("settings_env")
def test_priority_selects_the_queue(priority: int, queue: str) -> None:
    assert Settings().queue_url_for(priority) == f"http://{queue}"  # type: ignore[call-arg]


@pytest.mark.usefixtures("settings_env")
def test_auth_settings_default_the_jwks_to_the_issuers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()  # type: ignore[call-arg]
    assert settings.jwks_url == "https://issuer.example/pool/.well-known/jwks.json"
    assert settings.auth_audiences == ["client-a", "client-b"]
    assert settings.auth_token_uses == ["access"]
    # An empty variable (the template's default) means the issuer's own keys.
    monkeypatch.setenv("AUTH_JWKS_URL", "")
    assert Settings().jwks_url.endswith("/pool/.well-known/jwks.json")  # type: ignore[call-arg]
    monkeypatch.setenv("AUTH_JWKS_URL", "http://127.0.0.1:4566/pool/.well-known/jwks.json")
    assert Settings().jwks_url.startswith("http://127.0.0.1:4566/")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("backend", "setting", "seconds"),
    [("dynamodb", None, 0.11), ("redis", None, 0.0), ("redis", 50, 0.05), ("dynamodb", 0, 0.0)],
)
def test_the_write_interval_follows_the_backend_unless_set(
    backend: str, setting: int | None, seconds: float
) -> None:
    s = Settings.model_construct(chunklog_backend=backend, chunk_flush_interval_ms=setting)
    assert s.flush_interval_seconds == pytest.approx(seconds)


@pytest.mark.usefixtures("settings_env")
def test_a_request_reserves_its_tools_and_tool_results_too() -> None:
    from llmstream.admission import estimate

    settings = Settings()  # type: ignore[call-arg]
    plain = ChatRequest(message="hi", session_id="s1")
    base = estimate(settings, plain, 100)
    tools = ChatRequest.model_validate(
        {
            "message": "hi",
            "session_id": "s1",
            "tools": [{"type": "function", "function": {"name": "f", "description": "x" * 4000}}],
            "tool_results": [{"call_id": "c1", "output": "y" * 8000}],
        }
    )
    fields = tools.task_fields()
    with_tools = estimate(settings, tools, 100, fields["input"], fields["tools"])
    # ~4 characters a token: the tool's description and the result are reserved as prompt
    assert with_tools - base >= (4000 + 8000) // 4


def test_tool_results_continue_a_conversation_and_may_stand_for_the_message() -> None:
    body = {"tool_results": [{"call_id": "c1", "output": "42"}]}
    with pytest.raises(ValidationError):
        ChatRequest.model_validate(body)  # no conversation to continue
    req = ChatRequest.model_validate({**body, "session_id": "s1"})
    assert req.message == ""
    assert req.task_fields()["input"] == [{"role": "tool", "tool_call_id": "c1", "content": "42"}]
    # a forced choice with no tools to choose from is a 400 naming tool_choice
    from llmstream.exceptions import BadRequest

    with pytest.raises(BadRequest) as err:
        ChatRequest.model_validate({"message": "hi", "tool_choice": "required"}).task_fields()
    assert err.value.param == "tool_choice"
