"""Serve the stand-in by hand: `python -m tests.azure_fake --port 8443`.

Seeds a demo tenant (apps, users, a DevOps organization), prints endpoints, ids and secrets,
and serves until Ctrl-C. Drive faults with curl against `/_control` (see control.py).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from .server import FakeAzure, start_fake_azure

BROKER_CALLBACK = "http://127.0.0.1:7071/organization/app-connections/azure/oauth/callback"


def seed_demo(fake: FakeAzure) -> dict[str, Any]:
    """A tenant with the apps and users a broker needs; returns what was made (with secrets)."""
    tenant = fake.add_tenant(domain="contoso.example", display_name="Contoso (demo)")
    operator = fake.add_application(
        tenant,
        "broker-operator (OAuth)",
        multi_tenant=True,
        redirect_uris=[BROKER_CALLBACK],
        delegated_permissions=["Application.ReadWrite.All", "User.Read"],
    )
    _, operator_secret = fake.add_password(operator, display_name="operator")
    rotated = fake.add_application(tenant, "rotated-app", permissions=["Application.ReadWrite.All"])
    rotated_key, rotated_secret = fake.add_password(rotated, display_name="initial")
    leases = fake.add_application(
        tenant, "lease-manager", permissions=["User.ReadWrite.All"], directory_roles=["User Administrator"]
    )
    _, leases_secret = fake.add_password(leases, display_name="leases")
    admin = fake.add_user(tenant, "admin@contoso.example", "Adm1n-Passw0rd!", "Demo Admin")
    fake.assign_directory_role(admin, "Application Administrator")
    alice = fake.add_user(tenant, "alice@contoso.example", "Alice-Passw0rd!", "Alice")
    org = fake.add_devops_org("contoso", projects=5, tenant=tenant, members=[rotated, admin])
    pat = fake.add_pat(org, scopes=["vso.project", "vso.variablegroups_manage"])
    target = fake.add_application(tenant, "web-app (secret rotation target)")
    fake.add_owner(target, rotated)
    vault = fake.add_vault("apps", tenant)
    fake.grant_vault(vault, rotated, "Key Vault Secrets Officer")
    store = fake.add_app_config_store("config", tenant)
    fake.grant_app_config(store, rotated, "App Configuration Data Owner")
    group = fake.add_variable_group(org, org.projects[0].name, "web-secrets", {"Region": "westeurope"})
    api = fake.add_application(tenant, "broker-api", identifier_uris=["api://azure-credential-broker"])
    token = fake.mint_caller_token(tenant.id, "api://azure-credential-broker", roles=["Broker.Admin"])
    return {
        "tenant": {"id": tenant.id, "domain": tenant.default_domain},
        "operator app (multi-tenant, OAuth)": {"clientId": operator.app_id, "clientSecret": operator_secret},
        "rotated app (Application.ReadWrite.All)": {
            "clientId": rotated.app_id,
            "clientSecret": rotated_secret,
            "keyId": rotated_key,
        },
        "lease app (User.ReadWrite.All + User Administrator)": {
            "clientId": leases.app_id,
            "clientSecret": leases_secret,
        },
        "users": {admin.user_principal_name: admin.id, alice.user_principal_name: alice.id},
        "devops": {"organization": org.name, "pat": pat},
        "secret rotation target (owned by the rotated app)": {
            "clientId": target.app_id,
            "objectId": target.id,
        },
        "destinations (the rotated app holds the roles)": {
            "vaultUrl": fake.vault_url(vault.name),
            "appConfigEndpoint": fake.app_config_endpoint(store.name),
            "variableGroup": f"{org.projects[0].name}/{group.name} (id {group.id})",
        },
        "broker API app": {"clientId": api.app_id, "audience": "api://azure-credential-broker"},
        "caller token (Broker.Admin, 1 h)": token,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.azure_fake", description=__doc__)
    parser.add_argument("--port", type=int, default=8443, help="main port (Entra, Graph, DevOps, control)")
    parser.add_argument("--vault-port", type=int, default=None, help="Key Vault port (default: port + 1)")
    parser.add_argument("--tls-dir", type=Path, default=None, help="where to write the CA and server cert")
    parser.add_argument("--no-seed", action="store_true", help="start empty")
    args = parser.parse_args(argv)
    default_vault_port = args.port + 1 if args.port else 0
    vault_port = args.vault_port if args.vault_port is not None else default_vault_port
    fake = start_fake_azure(args.port, vault_port, tls_dir=args.tls_dir, trust=False)
    print("azure-fake is serving on loopback HTTPS")
    for name, value in fake.env().items():
        print(f"  export {name}={value}")
    print(f"  control API: {fake.base_url}/_control   (curl --cacert {fake.ca_file} ...)")
    if not args.no_seed:
        print("\nDemo data:")
        for section, value in seed_demo(fake).items():
            if isinstance(value, dict):
                print(f"  {section}:")
                for key, item in value.items():
                    print(f"    {key}: {item}")
            else:
                print(f"  {section}: {value}")
    print("\nCtrl-C stops it.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    fake.stop()


if __name__ == "__main__":
    main()
