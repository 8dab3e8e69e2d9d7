"""core.settings refuses what would run wrongly in Azure, naming the setting and the fix.

Each case runs `get_settings()` over a controlled environment, as the worker does at start
(function_app calls it on import), and also checks that `import function_app` itself fails in a
fresh interpreter with the setting's name in the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import MIN_LOCAL_TOKEN_LENGTH, Settings, SettingsError, get_settings

ROOT = Path(__file__).resolve().parent.parent
GOOD_TOKEN = "x" * MIN_LOCAL_TOKEN_LENGTH
BASE = {
    "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "AUTH_MODE": "local",
    "LOCAL_API_TOKEN": GOOD_TOKEN,
}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A clean environment holding BASE; the test adds to it, then calls get_settings()."""
    for name in list(os.environ):
        if name.lower() in Settings.model_fields or name.startswith("WEBSITE_"):
            monkeypatch.delenv(name)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield BASE
    get_settings.cache_clear()


def _refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as caught:
        get_settings()
    return str(caught.value)


def test_defaults_of_the_wave_two_settings(environ: dict[str, str]) -> None:
    settings = get_settings()
    assert settings.inventory_schedule == "0 0 * * * *"
    assert settings.expiry_warning_days == 30
    assert settings.events_topic_endpoint is None
    assert settings.destination_host_patterns == ("*.vault.azure.net", "*.azconfig.io")


def test_wave_two_settings_are_read_and_checked(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESTINATION_HOSTS", " 127.0.0.1:* , *.vault.usgovcloudapi.net")
    monkeypatch.setenv("EXPIRY_WARNING_DAYS", "7")
    monkeypatch.setenv("EVENTS_TOPIC_ENDPOINT", "https://t.westeurope-1.eventgrid.azure.net/api/events")
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.destination_host_patterns == ("127.0.0.1:*", "*.vault.usgovcloudapi.net")
    assert settings.expiry_warning_days == 7
    assert settings.events_topic_endpoint == "https://t.westeurope-1.eventgrid.azure.net/api/events"

    assert "DESTINATION_HOSTS" in _refused(monkeypatch, DESTINATION_HOSTS="https://x.vault.azure.net/")
    monkeypatch.setenv("DESTINATION_HOSTS", "*.vault.azure.net")
    assert "EXPIRY_WARNING_DAYS" in _refused(monkeypatch, EXPIRY_WARNING_DAYS="0")
    monkeypatch.setenv("EXPIRY_WARNING_DAYS", "30")
    assert "INVENTORY_SCHEDULE" in _refused(monkeypatch, INVENTORY_SCHEDULE="hourly")
    monkeypatch.setenv("INVENTORY_SCHEDULE", "0 0 * * * *")
    assert "EVENTS_TOPIC_ENDPOINT" in _refused(monkeypatch, EVENTS_TOPIC_ENDPOINT="http://t/api/events")


@pytest.mark.parametrize(
    "name",
    [
        "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
        "INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET",
    ],
)
def test_an_unresolved_key_vault_reference_is_refused_by_name(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/oauth/)"
    message = _refused(monkeypatch, **{name: reference})
    assert name in message
    assert "@Microsoft.KeyVault" in message
    assert "identity" in message  # says what to check


def test_a_reference_in_any_setting_is_refused(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _refused(monkeypatch, AUTH_AUDIENCE="@microsoft.keyvault(VaultName=kv;SecretName=aud)")
    assert "AUTH_AUDIENCE" in message


@pytest.mark.parametrize("marker", ["WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME"])
def test_local_auth_is_refused_in_azure(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    message = _refused(monkeypatch, **{marker: "func-broker-abc"})
    assert "AUTH_MODE=local" in message
    assert "AUTH_MODE=entra" in message


def test_entra_auth_runs_in_azure(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSITE_SITE_NAME", "func-broker-abc")
    monkeypatch.setenv("AUTH_MODE", "entra")
    monkeypatch.setenv("AUTH_TENANT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AUTH_AUDIENCE", "api://broker")
    get_settings.cache_clear()
    assert get_settings().auth_mode == "entra"


def test_a_short_local_token_is_refused(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, LOCAL_API_TOKEN="x" * (MIN_LOCAL_TOKEN_LENGTH - 1))
    assert "LOCAL_API_TOKEN" in message
    assert str(MIN_LOCAL_TOKEN_LENGTH) in message
    assert "x" * (MIN_LOCAL_TOKEN_LENGTH - 1) not in message  # the value is never echoed


def test_the_worker_does_not_start_with_a_refused_setting() -> None:
    """`import function_app` (what the worker does) fails and names the setting."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WEBSITE_")}
    env.update(BASE)
    env["WEBSITE_INSTANCE_ID"] = "abc"
    result = subprocess.run(
        [sys.executable, "-c", "import function_app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "AUTH_MODE=local is for the local stack only" in result.stderr


def test_make_run_token_passes_the_minimum(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The token scripts/run_local.py generates for `make run` is accepted."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_local", ROOT / "scripts" / "run_local.py")
    assert spec is not None
    assert spec.loader is not None
    run_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_local)
    monkeypatch.setattr(run_local, "LOCAL", tmp_path)
    monkeypatch.setenv("LOCAL_API_TOKEN", run_local._token())
    get_settings.cache_clear()
    token = get_settings().local_api_token
    assert token is not None
    assert len(token.get_secret_value()) >= MIN_LOCAL_TOKEN_LENGTH
