"""Token verification: signature, issuer, expiry, audience, token_use, groups."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from llmstream.auth import Authenticator, JwtVerifier, is_cognito
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


def authenticator(issuer: str = ISSUER, token_uses: str = "access") -> Authenticator:
    verifier = JwtVerifier(
        issuer=issuer,
        audiences=frozenset({CLIENT}),
        jwks_url="http://unused.invalid/jwks.json",
        token_uses=frozenset(token_uses.split(",")),
        groups_claim="cognito:groups",
        jwks=Jwks(),
    )
    return Authenticator([verifier], admin_group="admins")


def test_a_valid_access_token_is_its_user() -> None:
    user = authenticator().authenticate(f"Bearer {token(**{'cognito:groups': ['admins']})}")
    assert (user.sub, user.username, user.groups) == ("sub-alice", "alice", {"admins"})


def test_an_id_token_is_accepted_where_the_deployment_takes_them() -> None:
    # A Cognito id token names its app client in aud (an access token, in client_id).
    id_token = token(client_id=None, aud=CLIENT, token_use="id")
    user = authenticator(token_uses="access,id").authenticate(f"Bearer {id_token}")
    assert user.sub == "sub-alice"
    with pytest.raises(Unauthenticated, match="id token is not accepted"):
        authenticator().authenticate(f"Bearer {id_token}")


def test_a_cognito_token_without_token_use_is_refused() -> None:
    # Every token a user pool issues says what it is for; one that does not was not
    # issued as a sign-in (whatever else it carries).
    for claims in ({"token_use": None}, {"token_use": None, "client_id": None, "aud": CLIENT}):
        with pytest.raises(Unauthenticated, match="no token_use"):
            authenticator(token_uses="access,id").authenticate(f"Bearer {token(**claims)}")


def test_another_issuers_token_needs_no_token_use_but_is_checked_if_it_has_one() -> None:
    # An OIDC issuer other than Cognito (AuthIssuer) may put no token_use in its tokens.
    issuer = "https://login.example/realm"
    auth = authenticator(issuer=issuer)
    bare = token(iss=issuer, token_use=None, client_id=None, aud=CLIENT)
    assert auth.authenticate(f"Bearer {bare}").sub == "sub-alice"
    with pytest.raises(Unauthenticated, match="id token is not accepted"):
        auth.authenticate(f"Bearer {token(iss=issuer, token_use='id')}")


@pytest.mark.parametrize(
    ("issuer", "cognito"),
    [
        ("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc", True),
        ("https://cognito-idp.cn-north-1.amazonaws.com.cn/cn-north-1_Abc", True),
        ("https://login.example/realm", False),
        ("https://cognito-idp.eu-west-1.amazonaws.com.evil.example/x", False),
    ],
)
def test_a_cognito_issuer_is_known_by_its_host(issuer: str, cognito: bool) -> None:
    assert is_cognito(issuer) is cognito


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
