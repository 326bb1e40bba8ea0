"""Token verification: signature, issuer, expiry, audience, token_use, groups."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from llmstream.auth import Authenticator, JwtVerifier
from llmstream.exceptions import Forbidden, Unauthenticated

pytestmark = pytest.mark.unit
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_test"
CLIENT = "client-1"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    """The issuer's key set, as PyJWKClient hands out keys (no network in unit tests)."""

    def __init__(self) -> None:
        self.fetches = 0

    def get_signing_key_from_jwt(self, token: str) -> Any:
        self.fetches += 1
        if jwt.get_unverified_header(token).get("kid") != "k1":
            raise jwt.PyJWKClientError("Unable to find a signing key that matches")
        return jwt.PyJWK.from_dict(
            {**jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}
        )


def token(key: Any = KEY, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": "sub-alice",
        "iss": ISSUER,
        "client_id": CLIENT,
        "token_use": "access",
        "username": "alice",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, "RS256", {"kid": kid})


def authenticator() -> Authenticator:
    verifier = JwtVerifier(
        issuer=ISSUER,
        audiences=frozenset({CLIENT}),
        jwks_url="http://unused.invalid/jwks.json",
        token_uses=frozenset({"access"}),
        groups_claim="cognito:groups",
        jwks=Jwks(),
    )
    return Authenticator([verifier], admin_group="admins")


def test_a_valid_access_token_is_its_user() -> None:
    user = authenticator().authenticate(f"Bearer {token(**{'cognito:groups': ['admins']})}")
    assert (user.sub, user.username, user.groups) == ("sub-alice", "alice", {"admins"})


def test_an_id_token_style_audience_is_accepted() -> None:
    user = authenticator().authenticate(
        f"Bearer {token(client_id=None, aud=CLIENT, token_use=None)}"
    )
    assert user.sub == "sub-alice"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "sign in"),
        ("", "sign in"),
        ("Basic dXNlcjpwYXNz", "sign in"),
        ("Bearer ", "sign in"),
        ("Bearer not-a-jwt", "not a credential"),
        ("Bearer a.b.c", "invalid token"),
    ],
)
def test_missing_or_malformed_credentials_are_refused(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        authenticator().authenticate(header)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"key": OTHER_KEY}, "Signature verification failed"),
        ({"kid": "unknown"}, "signing key"),
        ({"iss": "https://evil.example/"}, "issuer"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"client_id": "another-client"}, "another client"),
        ({"token_use": "id", "aud": CLIENT}, "id token is not accepted"),
        ({"sub": None}, "sub"),
    ],
)
def test_tokens_that_do_not_check_out_are_refused(bad: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        authenticator().authenticate(f"Bearer {token(**bad)}")


def test_operator_routes_need_the_admins_group() -> None:
    auth = authenticator()
    alice = auth.authenticate(f"Bearer {token()}")
    with pytest.raises(Forbidden, match="admins"):
        auth.require_admin(alice)
    admin = auth.authenticate(f"Bearer {token(**{'cognito:groups': ['admins']})}")
    assert auth.require_admin(admin) is admin
