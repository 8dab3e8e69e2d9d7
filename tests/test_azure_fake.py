# ruff: noqa: F811 - the shared fixtures are imported and then named as test arguments
"""The Azure stand-in, driven through the real SDKs (azure-identity, msgraph, Key Vault) and httpx."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.identity.aio import CertificateCredential, ClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody,
)
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.generated.models.password_profile import PasswordProfile
from msgraph.generated.models.user import User as GraphUser
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient

from tests.azure_fake import FakeAzure, Tenant, make_self_signed_certificate
from tests.azure_fake.fixtures import fake, healthy_fake, http, tenant  # noqa: F401 (pytest fixtures)
from tests.azure_fake.state import Application

DEVOPS = "499b84ac-1321-427f-aa17-267ca6975798"
CALLBACK = "https://broker.example/organization/app-connections/azure/oauth/callback"


# ------------------------------------------------------------------ fixtures


def new_app(
    fake: FakeAzure, tenant: Tenant, *permissions: str, **options: Any
) -> tuple[Application, str, str]:
    app = fake.add_application(tenant, f"app-{uuid.uuid4().hex[:6]}", permissions, **options)
    key_id, secret = fake.add_password(app, display_name="test")
    return app, key_id, secret


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def graph_client(fake: FakeAzure, credential: Any) -> GraphServiceClient:
    """A GraphServiceClient pointed at the stand-in, as our code builds it."""
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[f"{fake.graph_endpoint}/.default"])
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{fake.graph_endpoint}/v1.0"
    return GraphServiceClient(request_adapter=adapter)


@pytest.fixture
async def credential_factory(fake: FakeAzure) -> AsyncIterator[Any]:
    made: list[Any] = []

    def make(tenant_id: str, client_id: str, secret: str) -> ClientSecretCredential:
        cred = ClientSecretCredential(tenant_id, client_id, secret, authority=fake.authority_host)
        made.append(cred)
        return cred

    yield make
    for cred in made:
        await cred.close()


# ------------------------------------------------------------------ Entra ID: client credentials


async def test_client_secret_credential_gets_a_graph_token(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, _, secret = new_app(fake, tenant, "Application.ReadWrite.All")
    token = await credential_factory(tenant.id, app.app_id, secret).get_token(
        f"{fake.graph_endpoint}/.default"
    )
    claims = claims_of(token.token)
    assert claims["aud"] == fake.graph_endpoint
    assert claims["iss"] == f"{fake.authority_host}/{tenant.id}/v2.0"
    assert claims["tid"] == tenant.id
    assert claims["azp"] == app.app_id
    assert claims["roles"] == ["Application.ReadWrite.All"]
    assert claims["oid"] == fake.service_principal(app).id
    assert token.expires_on > time.time() + 3000


async def test_tenant_may_be_named_by_verified_domain(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, _, secret = new_app(fake, tenant)
    token = await credential_factory("contoso.example", app.app_id, secret).get_token(f"{DEVOPS}/.default")
    assert claims_of(token.token)["tid"] == tenant.id
    assert claims_of(token.token)["aud"] == DEVOPS


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong secret", "AADSTS7000215"),
        ("expired secret", "AADSTS7000222"),
        ("removed secret", "AADSTS7000215"),
        ("unknown app", "AADSTS700016"),
        ("unknown tenant", "AADSTS90002"),
        ("unknown resource", "AADSTS500011"),
    ],
)
async def test_client_secret_refusals_carry_the_aadsts_code(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any, case: str, code: str
) -> None:
    app, key_id, secret = new_app(fake, tenant)
    tenant_id, client_id, scope = tenant.id, app.app_id, f"{fake.graph_endpoint}/.default"
    if case == "wrong secret":
        secret = secret[:-1] + ("x" if secret[-1] != "x" else "y")
    elif case == "expired secret":
        _, secret = fake.add_password(app, end=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    elif case == "removed secret":
        assert fake.remove_password(app, key_id)
    elif case == "unknown app":
        client_id = str(uuid.uuid4())
    elif case == "unknown tenant":
        tenant_id = str(uuid.uuid4())
    else:
        scope = "https://nowhere.example/.default"
    with pytest.raises(ClientAuthenticationError) as raised:
        await credential_factory(tenant_id, client_id, secret).get_token(scope)
    assert code in raised.value.message


async def test_certificate_credential_signs_in_with_a_registered_certificate(
    fake: FakeAzure, tenant: Tenant
) -> None:
    app = fake.add_application(tenant, "cert-app", ["Application.Read.All"])
    cert_pem, key_pem = make_self_signed_certificate("cert-app")
    fake.add_certificate(app, cert_pem)
    credential = CertificateCredential(
        tenant.id, app.app_id, certificate_data=(cert_pem + key_pem).encode(), authority=fake.authority_host
    )
    try:
        token = await credential.get_token(f"{fake.graph_endpoint}/.default")
    finally:
        await credential.close()
    claims = claims_of(token.token)
    assert claims["azpacr"] == "2"
    assert claims["roles"] == ["Application.Read.All"]

    other_cert, other_key = make_self_signed_certificate("not registered")
    stranger = CertificateCredential(
        tenant.id,
        app.app_id,
        certificate_data=(other_cert + other_key).encode(),
        authority=fake.authority_host,
    )
    try:
        with pytest.raises(ClientAuthenticationError) as raised:
            await stranger.get_token(f"{fake.graph_endpoint}/.default")
    finally:
        await stranger.close()
    assert "AADSTS700027" in raised.value.message


def test_sync_msal_credentials_need_instance_discovery_off(fake: FakeAzure, tenant: Tenant) -> None:
    """Sync azure-identity goes through MSAL (requests): it works with disable_instance_discovery=True."""
    from azure.identity import ClientSecretCredential as SyncClientSecretCredential

    app, _, secret = new_app(fake, tenant, "User.Read.All")
    credential = SyncClientSecretCredential(
        tenant.id, app.app_id, secret, authority=fake.authority_host, disable_instance_discovery=True
    )
    token = credential.get_token(f"{fake.graph_endpoint}/.default")
    assert claims_of(token.token)["roles"] == ["User.Read.All"]
    with pytest.raises(ClientAuthenticationError) as raised:
        SyncClientSecretCredential(
            tenant.id, app.app_id, "wrong", authority=fake.authority_host, disable_instance_discovery=True
        ).get_token(f"{fake.graph_endpoint}/.default")
    assert "AADSTS7000215" in str(raised.value)


async def test_replication_delay_refuses_a_fresh_secret_then_accepts_it(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, _, secret = new_app(fake, tenant, "Application.ReadWrite.All", owned_by_itself=True)
    fake.set_replication_delay(2.0)
    client = graph_client(fake, credential_factory(tenant.id, app.app_id, secret))
    added = await client.applications.by_application_id(app.id).add_password.post(
        AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="rotated"))
    )
    assert added is not None
    assert added.secret_text
    fresh = credential_factory(tenant.id, app.app_id, added.secret_text)
    with pytest.raises(ClientAuthenticationError) as raised:
        await fresh.get_token(f"{fake.graph_endpoint}/.default")
    assert "AADSTS7000215" in raised.value.message
    await asyncio.sleep(2.1)
    retry = credential_factory(tenant.id, app.app_id, added.secret_text)
    assert (await retry.get_token(f"{fake.graph_endpoint}/.default")).token


async def test_token_endpoint_faults_and_counters(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, _, secret = new_app(fake, tenant)
    before = fake.request_count("token", path_pattern=r"/oauth2/v2\.0/token", method="POST")
    fake.inject("token", "503", count=1, retry_after=1)
    # azure-identity retries a 503 from the token endpoint
    token = await credential_factory(tenant.id, app.app_id, secret).get_token(f"{DEVOPS}/.default")
    assert token.token
    assert fake.request_count("token", path_pattern=r"/oauth2/v2\.0/token", method="POST") == before + 2


# ------------------------------------------------------------------ Microsoft Graph through msgraph


async def test_graph_add_and_remove_password(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, original_key, secret = new_app(fake, tenant, "Application.ReadWrite.All")
    client = graph_client(fake, credential_factory(tenant.id, app.app_id, secret))

    found = await client.applications_with_app_id(app.app_id).get()
    assert found is not None
    assert found.id == app.id
    assert [str(c.key_id) for c in found.password_credentials or []] == [original_key]

    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    added = await client.applications.by_application_id(app.id).add_password.post(
        AddPasswordPostRequestBody(
            password_credential=PasswordCredential(display_name="next", end_date_time=end)
        )
    )
    assert added is not None
    assert added.secret_text
    assert added.key_id
    assert added.hint == added.secret_text[:3]
    assert {c.key_id for c in app.password_credentials} == {original_key, str(added.key_id)}

    await client.applications.by_application_id(app.id).remove_password.post(
        RemovePasswordPostRequestBody(key_id=uuid.UUID(original_key))
    )
    assert [c.key_id for c in app.password_credentials] == [str(added.key_id)]
    with pytest.raises(ODataError) as raised:
        await client.applications.by_application_id(app.id).remove_password.post(
            RemovePasswordPostRequestBody(key_id=uuid.UUID(original_key))
        )
    assert raised.value.response_status_code == 400

    # the removed secret no longer signs in; the new one does
    with pytest.raises(ClientAuthenticationError):
        await credential_factory(tenant.id, app.app_id, secret).get_token(f"{DEVOPS}/.default")
    assert await credential_factory(tenant.id, app.app_id, added.secret_text).get_token(f"{DEVOPS}/.default")


async def test_graph_denies_without_the_permission(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    target, _, _ = new_app(fake, tenant)
    app, _, secret = new_app(fake, tenant, "User.Read.All")
    client = graph_client(fake, credential_factory(tenant.id, app.app_id, secret))
    with pytest.raises(ODataError) as raised:
        await client.applications.by_application_id(target.id).add_password.post(
            AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="x"))
        )
    assert raised.value.response_status_code == 403
    assert raised.value.error is not None
    assert raised.value.error.code == "Authorization_RequestDenied"
    with pytest.raises(ODataError) as missing:
        await client.applications_with_app_id(str(uuid.uuid4())).get()
    assert missing.value.response_status_code in (403, 404)


async def test_graph_429_is_retried_by_the_sdk_after_retry_after(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    app, _, secret = new_app(fake, tenant, "Application.Read.All")
    client = graph_client(fake, credential_factory(tenant.id, app.app_id, secret))
    await client.applications_with_app_id(app.app_id).get()  # token acquired, connection warm
    pattern = rf"/applications\(appId='{app.app_id}'\)"
    fake.inject("graph", "429", count=1, path_pattern=pattern, retry_after=1)
    started = time.monotonic()
    found = await client.applications_with_app_id(app.app_id).get()
    assert found is not None
    assert found.app_id == app.app_id
    assert time.monotonic() - started >= 0.9
    assert fake.request_count("graph", path_pattern=pattern, method="GET") == 3


def test_graph_rate_limit_answers_429_with_retry_after(
    fake: FakeAzure, tenant: Tenant, http: httpx.Client
) -> None:
    app, _, secret = new_app(fake, tenant, "Application.Read.All")
    token = http.post(
        fake.token_endpoint(tenant),
        data={
            "grant_type": "client_credentials",
            "client_id": app.app_id,
            "client_secret": secret,
            "scope": f"{fake.graph_endpoint}/.default",
        },
    ).json()["access_token"]
    fake.set_graph_rate_limit(0.5, burst=2)
    url = f"{fake.graph_endpoint}/v1.0/applications/{app.id}"
    statuses = [http.get(url, headers={"Authorization": f"Bearer {token}"}) for _ in range(4)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    throttled = statuses[-1]
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert "request-id" in throttled.json()["error"]["innerError"]


def test_graph_rejects_bad_tokens(fake: FakeAzure, tenant: Tenant, http: httpx.Client) -> None:
    url = f"{fake.graph_endpoint}/v1.0/users/someone@contoso.example"
    assert http.get(url).json()["error"]["code"] == "InvalidAuthenticationToken"
    wrong_aud = fake.mint_caller_token(tenant.id, "https://graph.microsoft.com")
    response = http.get(url, headers={"Authorization": f"Bearer {wrong_aud}"})
    assert response.status_code == 401
    assert "audience" in response.json()["error"]["message"]
    expired = fake.mint_caller_token(tenant.id, fake.graph_endpoint, expires_in=-10)
    response = http.get(url, headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_graph_password_reset_enforces_role_and_complexity(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any, http: httpx.Client
) -> None:
    user = fake.add_user(tenant, "lease-user@contoso.example", "Initial-Passw0rd")
    admin_app, _, admin_secret = new_app(
        fake, tenant, "User.ReadWrite.All", directory_roles=["User Administrator"]
    )
    plain_app, _, plain_secret = new_app(fake, tenant, "User.ReadWrite.All")
    admin = graph_client(fake, credential_factory(tenant.id, admin_app.app_id, admin_secret))
    plain = graph_client(fake, credential_factory(tenant.id, plain_app.app_id, plain_secret))

    fetched = await admin.users.by_user_id(user.user_principal_name).get()
    assert fetched is not None
    assert fetched.id == user.id

    def reset(password: str) -> GraphUser:
        return GraphUser(
            password_profile=PasswordProfile(password=password, force_change_password_next_sign_in=False)
        )

    with pytest.raises(ODataError) as weak:
        await admin.users.by_user_id(user.id).patch(reset("alllowercase"))
    assert weak.value.response_status_code == 400
    assert weak.value.error is not None
    assert weak.value.error.code == "Request_BadRequest"
    with pytest.raises(ODataError) as no_role:
        await plain.users.by_user_id(user.id).patch(reset("Str0ng-Enough!"))
    assert no_role.value.response_status_code == 403

    await admin.users.by_user_id(user.id).patch(reset("Str0ng-Enough!"))
    assert user.password == "Str0ng-Enough!"
    assert user.password_change_count == 1

    public = fake.add_application(tenant, "ropc", public_client=True)

    def ropc(password: str) -> httpx.Response:
        return http.post(
            fake.token_endpoint(tenant),
            data={
                "grant_type": "password",
                "client_id": public.app_id,
                "username": user.user_principal_name,
                "password": password,
                "scope": "User.Read openid",
            },
        )

    old = ropc("Initial-Passw0rd")
    assert old.status_code == 400
    assert old.json()["error_codes"] == [50126]
    assert ropc("Str0ng-Enough!").status_code == 200


# ------------------------------------------------------------------ Key Vault through SecretClient


async def test_key_vault_secrets_round_trip(fake: FakeAzure, tenant: Tenant) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    kv_tenant = fake.add_tenant(domain="broker.example")
    fake.set_vault_tenant(kv_tenant)
    identity, _, secret = new_app(fake, kv_tenant)
    credential = ClientSecretCredential(kv_tenant.id, identity.app_id, secret, authority=fake.authority_host)
    client = SecretClient(fake.key_vault_url, credential, verify_challenge_resource=False)
    try:
        first = await client.set_secret("conn-1", "value-1")
        second = await client.set_secret("conn-1", "value-2", content_type="text/plain")
        assert first.properties.version != second.properties.version
        assert (await client.get_secret("conn-1")).value == "value-2"
        assert (await client.get_secret("conn-1", first.properties.version)).value == "value-1"

        for i in range(30):
            fake.set_secret(f"bulk-{i:02d}", "x")
        names = [p.name async for p in client.list_properties_of_secrets(max_page_size=7)]
        assert len(names) == 31
        assert "conn-1" in names

        deleted = await client.delete_secret("conn-1")
        assert deleted.recovery_id
        assert deleted.recovery_id.endswith("/deletedsecrets/conn-1")
        with pytest.raises(ResourceNotFoundError):
            await client.get_secret("conn-1")
        with pytest.raises(ResourceExistsError) as conflict:
            await client.set_secret("conn-1", "again")
        assert "deleted but recoverable" in str(conflict.value)
        assert (await client.get_deleted_secret("conn-1")).name == "conn-1"

        await client.recover_deleted_secret("conn-1")
        assert (await client.get_secret("conn-1")).value == "value-2"

        await client.delete_secret("conn-1")
        await client.purge_deleted_secret("conn-1")
        with pytest.raises(ResourceNotFoundError):
            await client.get_deleted_secret("conn-1")
        await client.set_secret("conn-1", "fresh")

        fake.restrict_vault_access([])  # the identity loses its role assignment
        with pytest.raises(HttpResponseError) as forbidden:
            await client.get_secret("conn-1")
        assert forbidden.value.status_code == 403
        fake.restrict_vault_access(None)
    finally:
        await client.close()
        await credential.close()


def test_key_vault_challenge_and_tenant_check(fake: FakeAzure, http: httpx.Client) -> None:
    url = f"{fake.key_vault_url}/secrets/anything?api-version=7.5"
    response = http.get(url)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer authorization="{fake.authority_host}/')
    assert 'resource="https://vault.azure.net"' in challenge
    other = fake.add_tenant()
    foreign = fake.mint_caller_token(other.id, "https://vault.azure.net")
    refused = http.get(url, headers={"Authorization": f"Bearer {foreign}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Unauthorized"


# ------------------------------------------------------------------ Azure DevOps through httpx


def _basic(pat: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f":{pat}".encode()).decode()}


def test_devops_projects_paging_and_pat_rules(fake: FakeAzure, tenant: Tenant, http: httpx.Client) -> None:
    org = fake.add_devops_org("fabrikam", projects=7, tenant=tenant)
    pat = fake.add_pat(org, scopes=["vso.project", "vso.variablegroups_manage"])
    url = f"{fake.devops_endpoint}/fabrikam/_apis/projects"
    names: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params = {"api-version": "7.1", "$top": "3", **({"continuationToken": token} if token else {})}
        response = http.get(url, params=params, headers=_basic(pat))
        assert response.status_code == 200
        names += [p["name"] for p in response.json()["value"]]
        pages += 1
        token = response.headers.get("x-ms-continuationtoken")
        if not token:
            break
    assert pages == 3
    assert len(names) == 7 == len(set(names))

    no_scope = fake.add_pat(org, scopes=["vso.code"])
    response = http.get(url, params={"api-version": "7.1"}, headers=_basic(no_scope))
    assert response.status_code == 401
    assert "TF400813" in response.json()["message"]

    unknown = http.get(url, params={"api-version": "7.1"}, headers=_basic("not-a-pat"))
    assert unknown.status_code == 203
    assert "text/html" in unknown.headers["content-type"]
    suppressed = http.get(
        url,
        params={"api-version": "7.1"},
        headers={**_basic("not-a-pat"), "X-TFS-FedAuthRedirect": "Suppress"},
    )
    assert suppressed.status_code == 401

    expired = fake.add_pat(org, expired=True)
    assert http.get(url, params={"api-version": "7.1"}, headers=_basic(expired)).status_code == 401

    missing_org = http.get(f"{fake.devops_endpoint}/nope/_apis/projects", params={"api-version": "7.1"})
    assert missing_org.status_code == 404
    assert missing_org.json()["typeKey"]

    assert http.get(url, headers=_basic(pat)).status_code == 400  # no api-version


async def test_devops_accepts_entra_tokens_of_members(
    fake: FakeAzure, tenant: Tenant, credential_factory: Any
) -> None:
    member, _, member_secret = new_app(fake, tenant)
    outsider, _, outsider_secret = new_app(fake, tenant)
    fake.add_devops_org("northwind", projects=2, tenant=tenant, members=[member])
    url = f"{fake.devops_endpoint}/northwind/_apis/projects?api-version=7.1"
    async with httpx.AsyncClient(timeout=10) as client:
        for app, secret, status in ((member, member_secret, 200), (outsider, outsider_secret, 401)):
            token = await credential_factory(tenant.id, app.app_id, secret).get_token(f"{DEVOPS}/.default")
            response = await client.get(url, headers={"Authorization": f"Bearer {token.token}"})
            assert response.status_code == status


# ------------------------------------------------------------------ OAuth: authorize + code + PKCE


def test_authorization_code_with_pkce_round_trip(fake: FakeAzure, tenant: Tenant, http: httpx.Client) -> None:
    operator = fake.add_application(
        tenant, "operator", multi_tenant=True, redirect_uris=[CALLBACK], delegated_permissions=["User.Read"]
    )
    _, operator_secret = fake.add_password(operator)
    customer = fake.add_tenant(domain="customer.example")
    user = fake.add_user(
        customer, "admin@customer.example", "Adm1n-Passw0rd!", directory_roles=["Global Administrator"]
    )
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    graph = fake.graph_endpoint
    scope = f"{graph}/Application.ReadWrite.All {graph}/User.Read offline_access openid"

    def authorize(**extra: str) -> httpx.Response:
        params = {
            "client_id": operator.app_id,
            "response_type": "code",
            "redirect_uri": CALLBACK,
            "scope": scope,
            "state": "conn-42",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        return http.get(fake.authorize_endpoint(customer), params=params)

    response = authorize()
    assert response.status_code == 302
    query = parse_qs(urlparse(response.headers["location"]).query)
    assert response.headers["location"].startswith(CALLBACK + "?")
    assert query["state"] == ["conn-42"]
    code = query["code"][0]

    def redeem(code: str, code_verifier: str) -> httpx.Response:
        return http.post(
            fake.token_endpoint(customer),
            data={
                "grant_type": "authorization_code",
                "client_id": operator.app_id,
                "client_secret": operator_secret,
                "code": code,
                "redirect_uri": CALLBACK,
                "code_verifier": code_verifier,
                "scope": scope,
            },
        )

    wrong = redeem(code, "not-the-verifier")
    assert wrong.json()["error_codes"] == [501481]
    tokens = redeem(code, verifier)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    claims = claims_of(body["access_token"])
    assert claims["scp"] == "Application.ReadWrite.All User.Read"
    assert claims["oid"] == user.id
    assert claims["tid"] == customer.id
    assert body["refresh_token"]
    assert body["id_token"]
    assert redeem(code, verifier).json()["error_codes"] == [54005]

    me = http.get(
        f"{fake.graph_endpoint}/v1.0/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["userPrincipalName"] == "admin@customer.example"

    def refresh(token: str) -> httpx.Response:
        return http.post(
            fake.token_endpoint(customer),
            data={
                "grant_type": "refresh_token",
                "client_id": operator.app_id,
                "client_secret": operator_secret,
                "refresh_token": token,
                "scope": scope,
            },
        )

    rotated = refresh(body["refresh_token"])
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != body["refresh_token"]
    reused = refresh(body["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert reused.json()["error_codes"] == [70000]

    # the refresh token also serves another resource (Azure DevOps), as Entra's multi-resource RTs do
    scope = f"{DEVOPS}/.default offline_access"
    devops = refresh(rotated.json()["refresh_token"])
    assert devops.status_code == 200
    assert claims_of(devops.json()["access_token"])["aud"] == DEVOPS
    assert claims_of(devops.json()["access_token"])["scp"] == "user_impersonation"

    # a password change revokes the user's refresh tokens
    fake.set_user_password(user, "An0ther-Passw0rd!")
    revoked = refresh(devops.json()["refresh_token"])
    assert revoked.json()["error_codes"] == [50173]

    fake.set_authorize_behaviour(deny=True)
    denied = parse_qs(urlparse(authorize().headers["location"]).query)
    assert denied["error"] == ["access_denied"]
    assert denied["error_description"][0].startswith("AADSTS65004")
    assert denied["state"] == ["conn-42"]


def test_authorize_refuses_unregistered_redirect_uri(
    fake: FakeAzure, tenant: Tenant, http: httpx.Client
) -> None:
    app = fake.add_application(tenant, "strict", redirect_uris=[CALLBACK])
    fake.add_user(tenant, "someone@contoso.example", "Passw0rd!!")
    response = http.get(
        fake.authorize_endpoint(tenant),
        params={"client_id": app.app_id, "response_type": "code", "redirect_uri": "https://evil.example/cb"},
    )
    assert response.status_code == 400
    assert "AADSTS50011" in response.text


# ------------------------------------------------------------------ caller tokens and JWKS


def test_caller_tokens_verify_against_jwks_and_keys_rotate(fake: FakeAzure, tenant: Tenant) -> None:
    audience = "api://azure-credential-broker"
    issuer = f"{fake.authority_host}/{tenant.id}/v2.0"
    config = httpx.get(fake.openid_configuration_url(tenant)).json()
    assert config["issuer"] == issuer
    jwks = jwt.PyJWKClient(config["jwks_uri"], cache_keys=False, cache_jwk_set=False)

    def verify(token: str) -> dict[str, Any]:
        key = jwks.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer)

    good = fake.mint_caller_token(tenant.id, audience, roles=["Broker.Admin"])
    assert verify(good)["roles"] == ["Broker.Admin"]

    with pytest.raises(jwt.ExpiredSignatureError):
        verify(fake.mint_caller_token(tenant.id, audience, expires_in=-60))
    with pytest.raises(jwt.InvalidAudienceError):
        verify(fake.mint_caller_token(tenant.id, "api://someone-else"))
    with pytest.raises(jwt.InvalidIssuerError):
        verify(fake.mint_caller_token(tenant.id, audience, issuer="https://sts.example/evil/v2.0"))
    with pytest.raises(jwt.PyJWTError):
        verify(fake.mint_caller_token(tenant.id, audience, alg="none"))
    with pytest.raises(jwt.PyJWTError):
        verify(fake.mint_caller_token(tenant.id, audience, alg="HS256"))  # HMAC keyed with the public key

    old_kid = fake.signing_kid
    new_kid = fake.rotate_signing_key()
    rotated = fake.mint_caller_token(tenant.id, audience)
    assert jwt.get_unverified_header(rotated)["kid"] == new_kid != old_kid
    assert verify(rotated)
    assert verify(good)
    fake.rotate_signing_key(drop_old=True)
    with pytest.raises(jwt.PyJWKClientError):
        verify(good)


# ------------------------------------------------------------------ control API


def test_control_api_drives_faults_and_counts(fake: FakeAzure, tenant: Tenant, http: httpx.Client) -> None:
    control = f"{fake.base_url}/_control"
    assert http.get(control).json()["graphEndpoint"] == fake.graph_endpoint
    created = http.post(f"{control}/faults", json={"service": "devops", "kind": "500", "count": 1})
    assert created.status_code == 201
    fake.add_devops_org("contoso-ctl", projects=1)
    url = f"{fake.devops_endpoint}/contoso-ctl/_apis/projects?api-version=7.1"
    assert http.get(url).status_code == 500
    assert http.get(url).status_code == 401  # fault used up; anonymous
    count = http.get(
        f"{control}/requests", params={"service": "devops", "path_pattern": "contoso-ctl"}
    ).json()
    assert count == {"count": 2}
    http.post(f"{control}/faults", json={"service": "*", "kind": "timeout", "count": None, "seconds": 2})
    with pytest.raises(httpx.ReadTimeout):
        http.get(url, timeout=0.3)
    assert http.delete(f"{control}/faults").status_code == 204
    assert http.get(url).status_code == 401
    summary = http.get(f"{control}/state").json()
    assert any(t["id"] == tenant.id for t in summary["tenants"])


def test_delay_fault_processes_the_request_late(fake: FakeAzure, tenant: Tenant, http: httpx.Client) -> None:
    """`delay` answers normally after sleeping: with a short client timeout the call happened anyway."""
    app, _, secret = new_app(fake, tenant, "Application.ReadWrite.All")
    token = http.post(
        fake.token_endpoint(tenant),
        data={
            "grant_type": "client_credentials",
            "client_id": app.app_id,
            "client_secret": secret,
            "scope": f"{fake.graph_endpoint}/.default",
        },
    ).json()["access_token"]
    fake.inject("graph", "delay", path_pattern="addPassword", seconds=0.6)
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            f"{fake.graph_endpoint}/v1.0/applications/{app.id}/addPassword",
            json={"passwordCredential": {"displayName": "lost response"}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=0.2,
        )
    deadline = time.monotonic() + 5
    while len(app.password_credentials) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c.display_name for c in app.password_credentials] == ["test", "lost response"]


def test_standalone_server_prints_endpoints_and_stops_on_ctrl_c(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.azure_fake", "--port", "0", "--tls-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            break
    output = "".join(lines)
    assert "AZURE_AUTHORITY_HOST=https://127.0.0.1:" in output
    assert f"SSL_CERT_FILE={tmp_path}/ca.pem" in output
    assert "clientSecret:" in output
    authority = output.split("AZURE_AUTHORITY_HOST=")[1].split()[0]
    with httpx.Client(verify=str(tmp_path / "ca.pem")) as client:
        assert client.get(f"{authority}/_control/state").json()["tenants"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0
