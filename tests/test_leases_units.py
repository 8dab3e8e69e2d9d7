"""Pure parts of the lease package: passwords, names, keys, backoff, error mapping."""

from __future__ import annotations

import base64
import json
import string
from datetime import UTC, datetime, timedelta

import pytest

from core.auth import unverified_claims
from core.errors import Unavailable, Unprocessable, UpstreamError, UpstreamTimeout
from leases import dynamic_secrets, provider, service
from leases import records as lease_rows
from leases.provider import AzureFailure, EntraUser
from tests.azure_fake.graph import password_complexity_error


def test_passwords_meet_entras_complexity_and_differ() -> None:
    seen = set()
    for _ in range(200):
        password = provider.generate_password()
        assert len(password) == provider.PASSWORD_LENGTH
        assert password_complexity_error(password) is None
        for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits, provider.SYMBOLS):
            assert any(c in alphabet for c in password)
        seen.add(password)
    assert len(seen) == 200
    with pytest.raises(ValueError, match="16"):
        provider.generate_password(8)


def user(upn: str, nickname: str | None = None) -> EntraUser:
    return EntraUser(
        id="x", user_principal_name=upn, mail_nickname=nickname, display_name=None, account_enabled=True
    )


@pytest.mark.parametrize(
    ("prefix", "entra_user", "name"),
    [
        ("ops", user("jane.doe@contoso.com"), "ops-jane-doe"),
        ("ops", user("jane.doe@contoso.com", "JDoe"), "ops-jdoe"),
        ("Ops", user("Bob_Smith@contoso.com"), "ops-bob-smith"),
        ("ops", user("guest_fabrikam.com#EXT#@contoso.onmicrosoft.com"), "ops-guest-fabrikam-com-ext"),
        ("ops", user("--x--@contoso.com"), "ops-x"),
        ("ops", user(("a" * 80) + "@contoso.com"), "ops-" + "a" * 59),
    ],
)
def test_dynamic_secret_names(prefix: str, entra_user: EntraUser, name: str) -> None:
    derived = dynamic_secrets.derive_name(prefix.lower(), entra_user)
    assert derived == name
    assert len(derived) <= 63
    assert service._NAME.match(derived)


def test_lease_ids_carry_their_partition_and_shard() -> None:
    lease_id = lease_rows.new_lease_id("ops-jane")
    name, shard = lease_rows.split_lease_id(lease_id) or ("", "")
    assert name == "ops-jane"
    assert shard in lease_rows.SHARDS
    assert lease_rows.shard_of(lease_id) == shard
    for bad in ("", "ops-jane", "ops-jane.xyz", "ops-jane." + "G" * 32, ".0123456789abcdef0123456789abcdef"):
        assert lease_rows.split_lease_id(bad) is None


def test_index_ranges_include_entries_due_at_the_bound_and_exclude_later_ones() -> None:
    now = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    low, high = lease_rows.index_range("due", now)
    lease_id = lease_rows.new_lease_id("n")

    def key(delta: timedelta) -> str:
        return lease_rows.index_key("due", now + delta, lease_id)

    assert low < key(-timedelta(days=400)) < high
    assert low < key(timedelta(0)) < high
    assert not key(timedelta(seconds=1)) < high
    for kind in ("intent", "purge"):  # other kinds sort outside the range
        assert not low < lease_rows.index_key(kind, now, lease_id) < high


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [service.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert service.backoff(50) == timedelta(hours=1)


def test_token_claims_are_read_from_the_payload() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"roles": ["User.ReadWrite.All"], "tid": "t"}).encode())
    token = "e30." + payload.decode().rstrip("=") + ".sig"
    claims = unverified_claims(token)
    assert provider.token_roles(claims) == {"User.ReadWrite.All"}
    assert claims["tid"] == "t"
    assert unverified_claims("opaque") == {}


def test_aadsts_codes_point_at_the_field_to_fix() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    failure = provider.token_failure(
        "token", ClientAuthenticationError("AADSTS7000215: Invalid client secret provided. Trace ID: x")
    )
    assert (failure.code, failure.field) == ("AADSTS7000215", "clientSecret")
    problem = service.azure_problem(failure, validating=True)
    assert isinstance(problem, Unprocessable)
    assert problem.errors[0].field == "clientSecret"
    assert "Invalid client secret provided" not in problem.detail  # our words, not the exception's
    unknown = provider.token_failure("token", ClientAuthenticationError("AADSTS50000: something"))
    assert unknown.code == "AADSTS50000"


@pytest.mark.parametrize(
    ("status", "code", "kind", "retry_after"),
    [
        (429, "TooManyRequests", Unavailable, "7"),
        (503, "serviceNotAvailable", Unavailable, "5"),
        (504, "UnknownError", UpstreamTimeout, None),
        (403, "Authorization_RequestDenied", UpstreamError, None),
        (404, "Request_ResourceNotFound", UpstreamError, None),
    ],
)
def test_azure_failures_map_to_problems(status: int, code: str, kind: type, retry_after: str | None) -> None:
    failure = AzureFailure("setPassword", status, code, "msg", retry_after=7 if status == 429 else None)
    problem = service.azure_problem(failure)
    assert isinstance(problem, kind)
    assert problem.extra["step"] == "setPassword"
    assert problem.extra["azureCode"] == code
    assert problem.headers.get("Retry-After") == retry_after


def test_ttl_consistency() -> None:
    hour = timedelta(hours=1)
    service.check_ttls(hour, hour)
    for default, maximum, field in (
        (2 * hour, hour, "defaultTtl"),
        (timedelta(seconds=30), hour, "defaultTtl"),
        (hour, timedelta(seconds=30), "maxTtl"),
    ):
        with pytest.raises(Unprocessable) as raised:
            service.check_ttls(default, maximum)
        assert raised.value.errors[0].field == field


def test_rows_written_before_typed_records_still_read() -> None:
    """Older rows hold TTLs as the API's text and repeat their keys as properties."""
    from core.tables import Row
    from leases.records import DynamicSecret, Lease

    ds = DynamicSecret.from_row(
        Row(
            "DynamicSecrets",
            "ds",
            "ops-jane",
            {
                "id": "d1",
                "prefix": "ops",
                "tenantId": "t",
                "applicationId": "a",
                "userId": "u",
                "userPrincipalName": "jane@example.com",
                "defaultTtl": "1h30m",
                "maxTtl": "4h",
                "credentialRef": "dynsecret-d1-client-secret",
                "createdAt": "2026-11-23T10:00:00Z",
                "updatedAt": "2026-11-23T10:00:00Z",
            },
            "etag-1",
        )
    )
    assert (ds.default_ttl, ds.max_ttl) == (timedelta(hours=1, minutes=30), timedelta(hours=4))
    assert ds.to_data()["defaultTtl"] == 5400  # written back as seconds
    lease_id = lease_rows.new_lease_id("ops-jane")
    at = "2026-11-23T10:00:00Z"
    lease = Lease.from_row(
        Row(
            "Leases",
            "ops-jane",
            lease_id,
            {
                "leaseId": lease_id,
                "dynamicSecretName": "ops-jane",
                "dynamicSecretId": "d1",
                "tenantId": "t",
                "applicationId": "a",
                "credentialRef": "r",
                "userId": "u",
                "userPrincipalName": "jane@example.com",
                "status": "revoke_failed",
                "createdAt": at,
                "expiresAt": at,
                "maxExpiresAt": at,
                "nextAttemptAt": at,
                "dueKey": f"due_{at}_{lease_id}",
                "attempts": 2,
            },
        )
    )
    assert (lease.id, lease.dynamic_secret_name, lease.attempts) == (lease_id, "ops-jane", 2)
    assert lease.next_attempt_at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert {"leaseId", "dynamicSecretName"}.isdisjoint(lease.to_data())
