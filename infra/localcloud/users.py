"""Users of the local user pool: created on demand, signed in through the pool itself.

The pool is the template's, provisioned on the local endpoint (moto serves cognito-idp:
real RS256 tokens and a JWKS route), so local tokens take the same path through the
functions' verification as tokens of the Cognito pool in the cloud. Passwords of the
users made here are kept in the stack's state folder (``users.json``), so ``./run.sh
token NAME`` signs the same user in again.
"""

from __future__ import annotations

import fcntl
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

ADMIN_GROUP = "admins"


@dataclass(frozen=True)
class LocalUser:
    name: str
    password: str
    access_token: str
    id_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        """What a client sends: the access token as a Bearer."""
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class UserPool:
    """One user pool on an endpoint, with the app client its users sign in through."""

    cognito: Any  # a boto3 cognito-idp client on the local endpoint
    pool_id: str
    client_id: str
    passwords_file: Path

    def ensure_user(self, name: str, *, admin: bool = False) -> LocalUser:
        """Sign ``name`` in, creating the user (and the admins membership) when missing.
        One process or thread at a time (a file lock): two that created the same user at
        once would each set a password and one would then fail to sign in."""
        self.passwords_file.parent.mkdir(parents=True, exist_ok=True)
        lock = self.passwords_file.with_suffix(".lock")
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                return self._ensure_user(name, admin=admin)
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)

    def _ensure_user(self, name: str, *, admin: bool) -> LocalUser:
        passwords = self._passwords()
        password = passwords.get(name)
        if password is None or not self._exists(name):
            # The template's policy: 12+ characters, upper and lower case, a digit.
            password = f"Ls-{secrets.token_urlsafe(12)}-9aZ"
            try:
                self.cognito.admin_create_user(
                    UserPoolId=self.pool_id, Username=name, MessageAction="SUPPRESS"
                )
            except ClientError as e:
                if e.response["Error"]["Code"] != "UsernameExistsException":
                    raise
            self.cognito.admin_set_user_password(
                UserPoolId=self.pool_id, Username=name, Password=password, Permanent=True
            )
            passwords[name] = password
            self.passwords_file.parent.mkdir(parents=True, exist_ok=True)
            self.passwords_file.write_text(json.dumps(passwords, indent=2))
            self.passwords_file.chmod(0o600)
        if admin:
            self.cognito.admin_add_user_to_group(
                UserPoolId=self.pool_id, Username=name, GroupName=ADMIN_GROUP
            )
        return self.sign_in(name, password)

    def sign_in(self, name: str, password: str) -> LocalUser:
        result = self.cognito.initiate_auth(
            ClientId=self.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": name, "PASSWORD": password},
        )["AuthenticationResult"]
        return LocalUser(
            name=name,
            password=password,
            access_token=result["AccessToken"],
            id_token=result["IdToken"],
            refresh_token=result["RefreshToken"],
        )

    def _exists(self, name: str) -> bool:
        try:
            self.cognito.admin_get_user(UserPoolId=self.pool_id, Username=name)
        except ClientError as e:
            if e.response["Error"]["Code"] == "UserNotFoundException":
                return False
            raise
        return True

    def _passwords(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.passwords_file.read_text()))
        except FileNotFoundError:
            return {}
