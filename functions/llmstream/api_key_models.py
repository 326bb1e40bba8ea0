"""The wire contract of the api's /keys routes (personal API keys, api_keys.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmstream.api_keys import NAME_MAX_CHARS, ApiKey, NewApiKey


class ApiKeyCreate(BaseModel):
    """Body of POST /keys."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Printable text, no control characters: it is shown in the page's list.
    name: str = Field(
        min_length=1,
        max_length=NAME_MAX_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="What the key is for (shown in the list)",
    )


class ApiKeyInfo(BaseModel):
    """One of your keys: never its secret."""

    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell it apart")
    created_at: float
    last_used_at: float | None = Field(None, description="Within a minute; null: never used")

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyInfo:
        return cls(
            id=key.key_id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
        )


class ApiKeyCreated(BaseModel):
    """201 answer of POST /keys: the only time the whole key is shown."""

    id: str
    name: str
    prefix: str
    created_at: float
    key: str = Field(description="The key: Authorization: Bearer <key>. Shown this once")

    @classmethod
    def of(cls, new: NewApiKey) -> ApiKeyCreated:
        return cls(
            id=new.key.key_id,
            name=new.key.name,
            prefix=new.key.prefix,
            created_at=new.key.created_at,
            key=new.secret,
        )


class ApiKeyList(BaseModel):
    """GET /keys: your keys, newest first."""

    keys: list[ApiKeyInfo]
