"""Who is calling: the request's bearer, verified, as a Principal every route depends on.

A bearer is a JWT from the user pool (Cognito, or any OIDC issuer the deployer names:
AUTH_ISSUER, AUTH_AUDIENCE) or a personal API key (``lls_...``, api_keys.py; where
API_KEYS_TABLE is set). ``Authenticator`` asks its verifiers in turn which one takes
a bearer, so a new kind of credential is one more verifier; routes see only ``Principal``.
The stream URL's ``?token=`` is a verifier too (tokens.StreamTokenVerifier), of one task:
the stream route asks it for that task alone, and it never takes an Authorization bearer.

In the cloud API Gateway's JWT authorizer checks the token before the api function runs;
the functions check it again because the stream function URL has no API Gateway in front
of it, and a second check of a cached key costs microseconds. Locally the same code checks
tokens of the same user pool, provisioned from template.yaml on the local endpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import jwt
from jwt import PyJWKClient

from llmstream.exceptions import AuthUnavailable, Forbidden, Unauthenticated
from llmstream.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)
_AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")


@dataclass(frozen=True)
class Principal:
    """A signed-in caller. ``sub`` owns every task, session and API key."""

    sub: str
    username: str
    groups: frozenset[str]
    # How they signed in: "stream_token" opens one task's stream only (tokens.py).
    via: Literal["jwt", "api_key", "stream_token"] = "jwt"

    def member_of(self, group: str) -> bool:
        return group in self.groups


class Verifier(Protocol):
    def accepts(self, bearer: str) -> bool:
        """True if this verifier is the one to judge ``bearer`` (by its form alone)."""

    def verify(self, bearer: str) -> Principal:
        """The caller, or Unauthenticated with the reason."""


class JwtVerifier:
    """RS256 JWTs of one issuer: signature (its JWKS, cached), issuer, expiry, audience
    (``aud``, or Cognito access tokens' ``client_id``) and ``token_use``: required of a
    Cognito user pool's tokens (every one carries it), checked where present for another
    OIDC issuer's (whose tokens may have none)."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: frozenset[str],
        jwks_url: str,
        token_uses: frozenset[str],
        groups_claim: str,
        leeway_seconds: float = 30.0,
        jwks: Any = None,
    ) -> None:
        self._issuer = issuer
        self._audiences = audiences
        self._token_uses = token_uses
        self._token_use_required = is_cognito(issuer)
        self._groups_claim = groups_claim
        self._leeway = leeway_seconds
        # The key set is kept for an hour; an unknown key id (a rotated pool key) fetches it
        # again, once. No per-key cache (cache_keys): it never expires, so a key the issuer
        # removed would go on working in a warm environment.
        self._jwks = jwks or PyJWKClient(jwks_url, cache_keys=False, lifespan=3600, timeout=5)

    def accepts(self, bearer: str) -> bool:
        return bearer.count(".") == 2

    def verify(self, bearer: str) -> Principal:
        try:
            key = self._jwks.get_signing_key_from_jwt(bearer)
        except jwt.PyJWKClientConnectionError as e:
            raise AuthUnavailable(f"the issuer's keys could not be fetched: {e}") from e
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"invalid token: {e}") from e
        try:
            claims: dict[str, Any] = jwt.decode(
                bearer,
                key.key,
                algorithms=["RS256"],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as e:
            raise Unauthenticated("token expired: sign in again or refresh it") from e
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"invalid token: {e}") from e
        audience = claims.get("aud", [])
        audiences = {audience} if isinstance(audience, str) else set(audience)
        if claims.get("client_id"):
            audiences.add(str(claims["client_id"]))
        if not audiences & self._audiences:
            raise Unauthenticated("invalid token: issued for another client")
        token_use = claims.get("token_use")
        if token_use is None and self._token_use_required:
            raise Unauthenticated("invalid token: no token_use (an id or access token)")
        if token_use is not None and token_use not in self._token_uses:
            raise Unauthenticated(f"invalid token: a {token_use} token is not accepted here")
        groups = claims.get(self._groups_claim) or []
        return Principal(
            sub=str(claims["sub"]),
            username=str(claims.get("username") or claims.get("cognito:username") or ""),
            groups=frozenset(str(g) for g in (groups if isinstance(groups, list) else [groups])),
        )


def is_cognito(issuer: str) -> bool:
    """A Cognito user pool's issuer (https://cognito-idp.<region>.amazonaws.com/<pool>)."""
    host = urlsplit(issuer).hostname or ""
    return host.startswith("cognito-idp.") and host.endswith(_AWS_DOMAINS)


class Authenticator:
    def __init__(self, verifiers: list[Verifier], admin_group: str) -> None:
        self._verifiers = verifiers
        self.admin_group = admin_group

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header."""
        scheme, _, bearer = (authorization or "").partition(" ")
        bearer = bearer.strip()
        if scheme.lower() != "bearer" or not bearer:
            raise Unauthenticated("sign in: send Authorization: Bearer <token>")
        for verifier in self._verifiers:
            if verifier.accepts(bearer):
                return verifier.verify(bearer)
        raise Unauthenticated("invalid token: not a credential this service issues")

    def require_admin(self, principal: Principal) -> Principal:
        if not principal.member_of(self.admin_group):
            raise Forbidden(f"for operators only (the {self.admin_group} group)")
        return principal


def build_authenticator(
    settings: Settings, jwks: Any = None, dynamodb: DynamoDBClient | None = None
) -> Authenticator:
    """The JWT verifier, and personal API keys where API_KEYS_TABLE is set (their table is
    read through ``dynamodb``, else the process's shared client, made on first use)."""
    jwt_verifier = JwtVerifier(
        issuer=settings.auth_issuer,
        audiences=frozenset(settings.auth_audiences),
        jwks_url=settings.jwks_url,
        token_uses=frozenset(settings.auth_token_uses),
        groups_claim=settings.auth_groups_claim,
        jwks=jwks,
    )
    verifiers: list[Verifier] = [jwt_verifier]
    if settings.api_keys_table:
        from llmstream.api_keys import ApiKeyVerifier  # it imports this module

        verifiers.append(
            ApiKeyVerifier(
                settings.api_keys_table,
                (lambda: dynamodb) if dynamodb is not None else _shared_dynamodb,
            )
        )
    return Authenticator(verifiers, admin_group=settings.auth_admin_group)


def _shared_dynamodb() -> DynamoDBClient:
    from llmstream.deps import get_deps  # on first use: deps builds every client

    return get_deps().dynamodb


@lru_cache(maxsize=1)
def get_authenticator() -> Authenticator:
    return build_authenticator(get_settings())
