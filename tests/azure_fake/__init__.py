"""A stateful stand-in for Entra ID, Microsoft Graph, Key Vault and Azure DevOps, over loopback HTTPS.

    from tests.azure_fake import start_fake_azure

    fake = start_fake_azure()            # ephemeral ports, CA trusted by this process
    tenant = fake.add_tenant(domain="contoso.example")
    app = fake.add_application(tenant, "rotator", permissions=["Application.ReadWrite.All"])
    key_id, secret = fake.add_password(app)
    ...
    fake.stop()

Endpoints: `fake.authority_host` (AZURE_AUTHORITY_HOST), `fake.graph_endpoint` (+ `/v1.0`),
`fake.devops_endpoint` (+ `/{org}`), `fake.key_vault_url`; `fake.ca_file` is the CA to trust.
`python -m tests.azure_fake --port 8443` serves a seeded demo until Ctrl-C.
"""

from .ca import make_self_signed_certificate, trust_ca_file
from .server import FakeAzure, start_fake_azure
from .state import (
    DEVOPS_RESOURCE,
    DIRECTORY_ROLE_TEMPLATES,
    KEYVAULT_RESOURCE,
    Application,
    DevOpsOrg,
    FakeState,
    Tenant,
    User,
)

__all__ = [
    "DEVOPS_RESOURCE",
    "DIRECTORY_ROLE_TEMPLATES",
    "KEYVAULT_RESOURCE",
    "Application",
    "DevOpsOrg",
    "FakeAzure",
    "FakeState",
    "Tenant",
    "User",
    "make_self_signed_certificate",
    "start_fake_azure",
    "trust_ca_file",
]
