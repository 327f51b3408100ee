"""Authentication and permissions: HTTP Basic and OCP's access-key signature,
401 without valid credentials, 403 (30014) with a permission missing, and nothing
written or started by a refused request."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from api.auth import canonical_resource, sign_request, string_to_sign
from arbup.records.iam import (
    ALL,
    ARBITRATION_READ,
    ARBITRATION_UPDATE,
    TASK_MANAGER,
    TASK_VIEWER,
    IamError,
    IamStore,
    MasterKey,
    MasterKeyMismatch,
    Principal,
    hash_password,
    verify_password,
)
from arbup.records.schema import iam_access_keys, iam_users
from tests.api.conftest import basic
from tests.conftest import TARGET

UPGRADE = "/api/v2/arbitration/services/groups/1/upgrade"
BODY = {"fullVersion": TARGET, "operatingSystem": "el7"}


# -- the records: hashes, grants, keys ------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_passwords_are_salted_scrypt_hashes(store, iam):
    with store.engine.connect() as conn:
        rows = conn.execute(iam_users.select()).all()
    stored = {row.name: row.password_hash for row in rows}
    assert stored["robot"] is None
    for name in ("admin", "viewer"):
        assert stored[name].startswith("scrypt$")
        assert "password" not in stored[name]
    one, two = hash_password("same-password"), hash_password("same-password")
    assert one != two  # salted
    assert verify_password("same-password", one) and not verify_password(
        "other-pw", one
    )
    assert iam.authenticate_password("admin", "admin-password-1").name == "admin"
    assert iam.authenticate_password("admin", "wrong-password") is None
    assert iam.authenticate_password("ghost", "admin-password-1") is None
    assert iam.authenticate_password("robot", "") is None


def test_grants_scopes_and_implications(iam):
    admin = iam.principal("admin")
    assert admin.has(ARBITRATION_UPDATE, 7) and admin.has(ARBITRATION_READ, 7)
    assert admin.has(TASK_VIEWER)  # implied by TASK_MANAGER
    partial = iam.principal("partial")
    assert partial.missing(ARBITRATION_UPDATE, [1, 2, 3]) == [2, 3]
    assert not partial.has(TASK_MANAGER)
    assert Principal("x").missing(ARBITRATION_READ, [1]) == [1]
    with pytest.raises(IamError):
        iam.grant("viewer", TASK_VIEWER, "3")  # global permissions take no scope
    with pytest.raises(IamError):
        iam.grant("viewer", "ROOT", ALL)
    with pytest.raises(IamError):
        iam.grant("viewer", ARBITRATION_UPDATE, "one")
    with pytest.raises(IamError):
        iam.add_user("admin", "another-password")
    with pytest.raises(IamError):
        iam.add_user("bad name", "some-password")
    assert iam.grant("viewer", TASK_VIEWER) is False
    assert iam.revoke("viewer", TASK_VIEWER) is True
    assert not iam.principal("viewer").has(TASK_VIEWER)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_access_key_secrets_are_derived_not_stored(store, iam, tmp_path):
    access_key, secret = iam.create_access_key("robot")
    with store.engine.connect() as conn:
        row = conn.execute(iam_access_keys.select()).one()
    assert row.access_key == access_key
    assert secret not in {str(v) for v in row}
    assert row.secret_check == hashlib.sha256(secret.encode()).hexdigest()
    principal, again = iam.access_key_secret(access_key)
    assert principal.name == "robot" and again == secret

    # Another master key cannot use the key; deleting the key revokes it.
    other = IamStore(store, MasterKey.load_or_create(tmp_path / "other.key"))
    with pytest.raises(MasterKeyMismatch):
        other.access_key_secret(access_key)
    iam.delete_access_key(access_key)
    assert iam.access_key_secret(access_key) is None


def test_string_to_sign_follows_the_documented_layout():
    message = string_to_sign(
        "post",
        "ABC",
        "application/json",
        "Tue, 17 Jan 2023 03:36:01 GMT",
        "ocp.example:8080",
        "x-ocp-a:1\nx-ocp-b:2",
        canonical_resource("/api/v2/x", "size=2&name=b%20c&name=a"),
    )
    assert message == (
        "POST\nABC\napplication/json\nTue, 17 Jan 2023 03:36:01 GMT\n"
        "ocp.example:8080\nx-ocp-a:1\nx-ocp-b:2\n/api/v2/x?name=a&name=b c&size=2"
    )
    headers = sign_request(
        "AKTEST",
        "s3cret",
        method="GET",
        host="h",
        path="/p",
        date=datetime(2023, 1, 17, 3, 36, 1, tzinfo=UTC),
    )
    expected = base64.b64encode(
        hmac.new(
            b"s3cret", b"GET\n\n\nTue, 17 Jan 2023 03:36:01 GMT\nh\n\n/p", hashlib.sha1
        ).digest()
    ).decode()
    assert headers == {
        "Authorization": f"OCP-ACCESS-KEY-HMACSHA1 AKTEST:{expected}",
        "Date": "Tue, 17 Jan 2023 03:36:01 GMT",
    }


# -- over HTTP ------------------------------------------------------------------------


def signed(
    api,
    access_key,
    secret,
    method,
    path,
    *,
    body=b"",
    query="",
    content_type="",
    date=None,
    extra=None,
):
    host = urlsplit(api.url).netloc
    headers = dict(extra or {})
    headers.update(
        sign_request(
            access_key,
            secret,
            method=method,
            host=host,
            path=path,
            query=query,
            body=body,
            content_type=content_type,
            headers=extra,
            date=date,
        )
    )
    if content_type:
        headers["Content-Type"] = content_type
    return headers


@pytest.mark.integration
async def test_access_key_signatures(fake_api, iam, client):
    access_key, secret = iam.create_access_key("robot")
    async with fake_api.http(user=None) as http:
        path = "/api/v2/tasks/instances"
        ok = await http.get(
            path,
            params={"size": "5", "page": "1"},
            headers=signed(
                fake_api,
                access_key,
                secret,
                "GET",
                path,
                query="size=5&page=1",
                extra={"X-OCP-Request-Id": "r1"},
            ),
        )
        assert ok.status_code == 200, ok.text
        me = await http.get(
            "/api/v2/iam/current/user",
            headers=signed(
                fake_api, access_key, secret, "GET", "/api/v2/iam/current/user"
            ),
        )
        assert me.json()["data"]["name"] == "robot"
        assert me.json()["data"]["authenticatedBy"] == "access-key"

        # A signed body: the signature covers its MD5.
        body = b'{"fullVersion": "4.2.0.0-1", "operatingSystem": "el7"}'
        headers = signed(
            fake_api,
            access_key,
            secret,
            "POST",
            UPGRADE,
            body=body,
            content_type="application/json",
        )
        response = await http.post(UPGRADE, content=body, headers=headers)
        assert response.status_code == 400, response.text  # past auth: not newer
        assert response.json()["error"]["code"] == 60006
        tampered = await http.post(
            UPGRADE, content=body.replace(b"4.2", b"4.9"), headers=headers
        )
        assert tampered.status_code == 401

        refusals = {
            "wrong secret": signed(fake_api, access_key, "not-the-secret", "GET", path),
            "unknown key": signed(fake_api, "AK" + "A" * 20, secret, "GET", path),
            "signed another path": signed(
                fake_api, access_key, secret, "GET", "/other"
            ),
            "stale date": signed(
                fake_api,
                access_key,
                secret,
                "GET",
                path,
                date=datetime.now(UTC) - timedelta(minutes=16),
            ),
            "no date": {
                "Authorization": signed(fake_api, access_key, secret, "GET", path)[
                    "Authorization"
                ]
            },
            "malformed": {
                "Authorization": "OCP-ACCESS-KEY-HMACSHA1 nocolon",
                "Date": "x",
            },
        }
        for why, headers in refusals.items():
            response = await http.get(path, headers=headers)
            assert response.status_code == 401, why
            assert response.json()["error"]["code"] == 60002, why

        iam.delete_access_key(access_key)
        gone = await http.get(
            path, headers=signed(fake_api, access_key, secret, "GET", path)
        )
        assert gone.status_code == 401


@pytest.mark.integration
async def test_missing_or_wrong_credentials_are_401(fake_api, store):
    cases = {
        "none": {},
        "wrong password": basic("admin", "not-the-password"),
        "unknown user": basic("ghost", "whatever-password"),
        "key-only user with a password": basic("robot", "anything-at-all"),
        "not base64": {"Authorization": "Basic !!!"},
        "no colon": {"Authorization": "Basic " + base64.b64encode(b"admin").decode()},
        "other scheme": {"Authorization": "Bearer abc"},
    }
    async with fake_api.http(user=None) as http:
        for why, headers in cases.items():
            for method, path, kwargs in (
                ("GET", "/api/v2/tasks/instances/1", {}),
                ("POST", UPGRADE, {"json": BODY}),
                ("GET", "/api/v2/arbitration/services/groups/1", {}),
            ):
                response = await http.request(method, path, headers=headers, **kwargs)
                assert response.status_code == 401, (why, path)
                body = response.json()
                assert body["successful"] is False and body["status"] == 401
                assert body["error"]["code"] == 60002
                assert "Basic" in response.headers["WWW-Authenticate"]
                assert body["traceId"] == response.headers["X-Trace-Id"]
        # The document itself is public.
        assert (await http.get("/openapi.json")).status_code == 200
    assert store.list_tasks()[1] == 0


@pytest.mark.integration
@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_missing_permission_is_403_naming_it_and_changes_nothing(
    fake_api, store, client
):
    async with fake_api.http(user="partial") as http:
        response = await http.post(UPGRADE, json=BODY)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == 30014
    assert "ARBITRATION:UPDATE" in error["message"]
    assert "service 2 (127.0.0.3:2882)" in error["message"]
    assert "service 1 " not in error["message"]
    assert error["target"] == ARBITRATION_UPDATE
    assert [s["target"] for s in error["subErrors"]] == ["arbitrationService:2"]

    async with fake_api.http(user="viewer") as http:
        response = await http.post(UPGRADE, json=BODY)
        assert response.status_code == 403
        assert (
            "services 1 (127.0.0.2:2882), 2 (127.0.0.3:2882)"
            in (response.json()["error"]["message"])
        )
        # Reading a group needs ARBITRATION:READ on its services.
        group = await http.get("/api/v2/arbitration/services/groups/1")
        assert group.status_code == 403
        assert "ARBITRATION:READ" in group.json()["error"]["message"]
        listed = await http.get("/api/v2/arbitration/services/groups")
        assert listed.json()["data"]["contents"] == []

    async with fake_api.http(user="nobody") as http:
        for path in (
            "/api/v2/tasks/instances",
            "/api/v2/tasks/instances/1",
            "/api/v2/tasks/instances/1/subtasks/1/log",
        ):
            response = await http.get(path)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == 30014
            assert "TASK_VIEWER" in response.json()["error"]["message"]

    # Nothing was written or started.
    assert store.list_tasks()[1] == 0
    assert store.get_group(1).active_task_id is None
    query = f'TaskQueue="{fake_api.settings.task_queue}"'
    assert [w async for w in client.list_workflows(query)] == []


@pytest.mark.integration
async def test_partial_grants_suffice_when_they_cover_every_service(
    fake_api, iam, store
):
    iam.grant("partial", ARBITRATION_UPDATE, "2")
    async with fake_api.http(user="partial") as http:
        response = await http.post(UPGRADE, json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["creator"] == "partial"
    assert store.get_group(1).active_task_id == response.json()["data"]["id"]
