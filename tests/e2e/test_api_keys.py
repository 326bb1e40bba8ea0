"""Personal API keys on the whole local stack: made on the api with a sign-in token, used
as a Bearer on the stream function, refused on the api's routes, revoked at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from localcloud.up import Stack
from tests.conftest import unique
from tests.e2e.conftest import auth
from tests.e2e.test_chat_flow import answer_of, post_chat, read_stream, text

pytestmark = pytest.mark.e2e


def create_key(stack: Stack, user: str, name: str = "laptop") -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.urls['api']}/keys", json={"name": name}, headers=auth(stack, user), timeout=10
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def keys_of(stack: Stack, user: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{stack.urls['api']}/keys", headers=auth(stack, user), timeout=10)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["keys"])


def bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


def test_a_key_opens_its_owners_streams_only_until_it_is_revoked(local_stack: Stack) -> None:
    stream = local_stack.urls["stream"]
    owner, other = unique("keys-owner"), unique("keys-other")
    # GIVEN a key made with the owner's sign-in, a task of theirs and one of another user
    key = create_key(local_stack, owner)
    assert key["key"].startswith(f"lls_{key['id']}_") and key["key"].startswith(key["prefix"])
    mine = post_chat(local_stack, {"message": "through a key"}, user=owner).json()
    theirs = post_chat(local_stack, {"message": "not the key's"}, user=other).json()
    # WHEN the key opens the owner's stream THEN it is the whole answer
    events = read_stream(f"{stream}/stream/{mine['task_id']}", headers=bearer(key))
    assert text(events) == answer_of("through a key")
    # AND another user's task is one that does not exist
    resp = httpx.get(f"{stream}/stream/{theirs['task_id']}", headers=bearer(key), timeout=10)
    assert resp.status_code == 404, resp.text
    # AND the list says when it was last used, never the key itself
    (listed,) = keys_of(local_stack, owner)
    assert listed["id"] == key["id"] and listed["last_used_at"] is not None
    assert "key" not in listed
    # WHEN it is revoked THEN its very next request is refused, with no echo of the key
    revoked = httpx.delete(
        f"{local_stack.urls['api']}/keys/{key['id']}", headers=auth(local_stack, owner), timeout=10
    )
    assert revoked.status_code == 204, revoked.text
    resp = httpx.get(f"{stream}/stream/{mine['task_id']}", headers=bearer(key), timeout=10)
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "unknown or revoked" in resp.json()["detail"] and key["key"] not in resp.text
    assert keys_of(local_stack, owner) == []


def test_a_key_cannot_mint_list_or_revoke_keys_nor_use_the_api(local_stack: Stack) -> None:
    api = local_stack.urls["api"]
    owner = unique("keys-minter")
    key = create_key(local_stack, owner)
    calls = [
        ("POST", "/keys", {"name": "another"}),
        ("GET", "/keys", None),
        ("DELETE", f"/keys/{key['id']}", None),
        ("POST", "/chat", {"message": "hi"}),
        ("GET", "/sessions", None),
    ]
    for method, path, body in calls:
        resp = httpx.request(method, f"{api}{path}", json=body, headers=bearer(key), timeout=10)
        assert resp.status_code == 403, (method, path, resp.text)
        assert "stream URL" in resp.json()["detail"] and key["key"] not in resp.text
    # AND nothing changed: the one key, still working
    assert [k["id"] for k in keys_of(local_stack, owner)] == [key["id"]]
    task = post_chat(local_stack, {"message": "still works"}, user=owner).json()
    stream = f"{local_stack.urls['stream']}/stream/{task['task_id']}"
    assert text(read_stream(stream, headers=bearer(key))) == answer_of("still works")


def test_another_users_key_id_is_not_found_and_bad_input_is_a_4xx(local_stack: Stack) -> None:
    api = local_stack.urls["api"]
    owner, other = unique("keys-a"), unique("keys-b")
    key = create_key(local_stack, owner)
    resp = httpx.delete(f"{api}/keys/{key['id']}", headers=auth(local_stack, other), timeout=10)
    assert resp.status_code == 404, resp.text
    assert [k["id"] for k in keys_of(local_stack, owner)] == [key["id"]]
    assert keys_of(local_stack, other) == []
    for name in ("", " ", "x" * 65):
        resp = httpx.post(
            f"{api}/keys", json={"name": name}, headers=auth(local_stack, owner), timeout=10
        )
        assert resp.status_code == 422, (name, resp.text)
    # A malformed key on the stream is a 401 with a reason, not an echo
    task = post_chat(local_stack, {"message": "hi"}, user=owner).json()
    forged = "lls_" + "a" * 12 + "_" + "b" * 43
    wrong_secret = key["key"][:-1] + ("A" if key["key"][-1] != "A" else "B")
    for bad in (forged, "lls_short", wrong_secret):
        resp = httpx.get(
            f"{local_stack.urls['stream']}/stream/{task['task_id']}",
            headers={"Authorization": f"Bearer {bad}"},
            timeout=10,
        )
        assert resp.status_code == 401, resp.text
        assert bad not in resp.text


def test_the_local_functions_get_the_keys_table_from_the_template(local_stack: Stack) -> None:
    # Processes and `sam local` containers alike: their environments come from template.yaml
    from localcloud.functions import container_environments

    assert local_stack.template is not None
    table = local_stack.template.physical_name("ApiKeysTable")
    containers = container_environments(local_stack)
    for function in ("ApiFunction", "StreamFunction"):
        assert local_stack.env[function]["API_KEYS_TABLE"] == table
        assert containers[function]["API_KEYS_TABLE"] == table
    assert "API_KEYS_TABLE" not in containers["WorkerFunction"]
