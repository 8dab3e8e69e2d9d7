"""Checks on the infrastructure code: Bicep (parsed with pycep), azd, the pipeline, checkov.

The Bicep CLI cannot be installed here, so these tests stand in for `bicep build`
where they can: every .bicep file must parse, module calls must match the module's
parameters, and the resources, app settings, role assignments, alerts and workbook
the issue asks for are asserted from the parsed tree. The app settings are compared
with `core.settings.Settings`, so a setting added to the code without Bicep fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"
CHECKOV = ROOT / "scripts" / "checkov.sh"

# Settings the code reads that have no place in Azure (local stack and tests only).
LOCAL_ONLY = {"TABLES_CONNECTION_STRING", "LOCAL_SECRETS_DIR", "LOCAL_API_TOKEN"}
# Settings the Functions platform reads (host storage by identity, telemetry by identity).
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Not supported on Flex Consumption (runtime and package live in functionAppConfig),
# or key-based: none may appear.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
}

ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
}
# role -> the resource type its assignment must be scoped to (never the resource group).
ROLE_SCOPES = {
    "Storage Blob Data Owner": "Microsoft.Storage/storageAccounts",
    "Storage Table Data Contributor": "Microsoft.Storage/storageAccounts",
    "Key Vault Secrets Officer": "Microsoft.KeyVault/vaults",
    "Monitoring Metrics Publisher": "Microsoft.Insights/components",
    "EventGrid Data Sender": "Microsoft.EventGrid/topics",
}

EVENT_PREFIX = "BROKER_EVENT "
EVENTS = (
    "rotation.succeeded",
    "rotation.failed",
    "lease.created",
    "lease.revoked",
    "lease.revoke_failed",
    "reconcile.fixed",
    "credential.expiring",
    "secret_rotation.succeeded",
    "secret_rotation.failed",
    "delivery.failed",
    "delivery.drifted",
)


# ---------------------------------------------------------------------------
# parsing helpers


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def body(entry: dict[str, Any]) -> dict[str, Any]:
    """The object of a resource or module, under any loop or condition."""
    config = entry["config"]
    while isinstance(config, dict) and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def resources(path: Path, rtype: str | None = None, *, existing: bool | None = False) -> dict[str, Any]:
    found = {}
    for name, entry in parse(path).get("resources", {}).items():
        if rtype is not None and entry["type"] != rtype:
            continue
        if existing is not None and entry["existing"] != existing:
            continue
        found[name] = entry
    return found


def only(path: Path, rtype: str) -> dict[str, Any]:
    found = resources(path, rtype)
    assert len(found) == 1, f"{path.name}: expected one {rtype}, found {sorted(found)}"
    return body(next(iter(found.values())))


def resolve(path: Path, value: Any) -> Any:
    """Follow a bare variable name to its value (pycep gives names and literals alike)."""
    variables = parse(path).get("variables", {})
    seen = set()
    while isinstance(value, str) and value in variables and value not in seen:
        seen.add(value)
        value = variables[value]["value"]
    return value


def walk(node: Any):
    yield node
    if isinstance(node, dict):
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def accessor(node: Any) -> str:
    """`a.b.c` (and `environment().x`) from pycep's nested property accessors."""
    if isinstance(node, str):
        return node
    if "function" in node:
        return f"{node['function']['type']}()"
    operands = node["operator"]["operands"]
    assert node["operator"]["type"] == "property_accessor", node
    return f"{accessor(operands['operand_1'])}.{accessor(operands['operand_2'])}"


def strings(node: Any) -> list[str]:
    return [n for n in walk(node) if isinstance(n, str)]


def app_settings() -> dict[str, Any]:
    site = only(MODULES / "functionapp.bicep", "Microsoft.Web/sites")
    entries = site["properties"]["siteConfig"]["appSettings"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "an app setting is set twice"
    return {e["name"]: e["value"] for e in entries}


def code_settings() -> set[str]:
    """Names the code reads: the fields of core.settings.Settings."""
    from core.settings import Settings

    return {name.upper() for name in Settings.model_fields}


# ---------------------------------------------------------------------------
# every file parses, modules are wired like `bicep build` would demand


def test_every_bicep_file_parses() -> None:
    files = bicep_files()
    assert INFRA / "main.bicep" in files
    assert len(files) >= 8, files
    for path in files:
        tree = parse(path)
        assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


def test_main_targets_a_resource_group() -> None:
    assert parse(INFRA / "main.bicep")["globals"]["scope"]["value"] == "resourceGroup"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_module_calls_match_module_parameters(path: Path) -> None:
    for name, module in parse(path).get("modules", {}).items():
        target = (path.parent / module["detail"]["path"]).resolve()
        assert target.exists(), f"{path.name}: module {name} -> missing {target}"
        declared = parse(target).get("parameters", {})
        passed = set(body(module).get("params", {}))
        unknown = passed - set(declared)
        assert not unknown, f"{path.name}: module {name} passes unknown params {sorted(unknown)}"
        required = {p for p, spec in declared.items() if spec.get("default") is None}
        missing = required - passed
        assert not missing, f"{path.name}: module {name} misses required params {sorted(missing)}"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_interpolations_name_declared_symbols(path: Path) -> None:
    tree = parse(path)
    declared = set()
    for section in ("parameters", "variables", "resources", "modules"):
        declared |= set(tree.get(section, {}))
    for node in walk(tree):  # loop variables: [for (item, index) in ...]
        if isinstance(node, dict) and isinstance(node.get("loop_type"), dict):
            detail = node["loop_type"]["detail"]
            declared |= {detail.get("item_name"), detail.get("index_name")} - {None}
    functions = {"environment", "subscription", "resourceGroup", "tenant", "deployment", "uniqueString"}
    for text in strings(tree):
        for symbol in re.findall(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)", text):
            assert symbol in declared or symbol in functions, f"{path.name}: ${{{symbol}}} is not declared"


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_loaded_files_exist_and_parse(path: Path) -> None:
    text = path.read_text()
    for function, target in re.findall(r"(load(?:Text|Json)Content)\('([^']+)'", text):
        loaded = (path.parent / target).resolve()
        assert loaded.exists(), f"{path.name}: {function} of missing {target}"
        if loaded.suffix == ".json":
            json.loads(loaded.read_text())


# ---------------------------------------------------------------------------
# the resources


def test_flex_consumption_function_app() -> None:
    path = MODULES / "functionapp.bicep"
    plan = only(path, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True

    site = only(path, "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"

    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }

    # Instance memory and max instances are deployment parameters, passed through.
    main = parse(INFRA / "main.bicep")
    memory = main["parameters"]["instanceMemoryMB"]
    allowed = next(d["argument"] for d in memory["decorators"] if d["type"] == "allowed")
    assert set(allowed) == {512, 2048, 4096}
    assert memory["default"] == 2048
    assert main["parameters"]["maximumInstanceCount"]["type"] == "int"
    passed = body(main["modules"]["functionApp"])["params"]
    assert passed["instanceMemoryMB"] == "instanceMemoryMB"
    assert passed["maximumInstanceCount"] == "maximumInstanceCount"


def test_user_assigned_identity() -> None:
    identity = only(MODULES / "identity.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities")
    assert identity["name"] == "name"
    outputs = parse(MODULES / "identity.bicep")["outputs"]
    assert {"id", "clientId", "principalId"} <= set(outputs)


def test_storage_account_is_locked_down() -> None:
    path = MODULES / "storage.bicep"
    props = only(path, "Microsoft.Storage/storageAccounts")["properties"]
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    assert props["supportsHttpsTrafficOnly"] is True

    containers = resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
    container = body(containers["deploymentContainer"])
    assert container["name"] == "deploymentContainerName"
    assert body(containers["hostContainers"])["properties"]["publicAccess"] == "None"
    assert container["properties"]["publicAccess"] == "None"
    tables = resources(path, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert len(tables) == 1
    loop = next(iter(tables.values()))["config"]["loop_type"]["detail"]
    assert loop["array_name"] == "tableNames"


def test_state_tables_follow_the_code() -> None:
    """Every table the app names (a record's `table="..."` or a `TABLE = "..."` constant) has a table
    in Bicep's default list."""
    declared = parse(INFRA / "main.bicep")["parameters"]["stateTableNames"]["default"]
    constants = set()
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    product = [name for name in packages if name not in ("tests", "bench")]
    assert {"core", "connections", "rotation", "leases", "inventory"} <= set(product), packages
    for package in product:
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            constants |= set(
                re.findall(
                    r'^\s*[A-Z_]*TABLE[A-Z_]*\s*(?::\s*[\w\[\]]+)?\s*=\s*"([A-Za-z][A-Za-z0-9]*)"', text, re.M
                )
            )
            constants |= set(re.findall(r'^class \w+\(.*\btable="([A-Za-z][A-Za-z0-9]*)"', text, re.M))
    assert {"AuditLog", "AppConnections", "Leases"} <= constants, "the TABLE constants were not found"
    missing = constants - set(declared)
    assert not missing, f"add {sorted(missing)} to stateTableNames in infra/main.bicep"


def test_event_grid_topic_takes_cloudevents_by_identity_only() -> None:
    props = only(MODULES / "eventgrid.bicep", "Microsoft.EventGrid/topics")["properties"]
    assert props["inputSchema"] == "CloudEventSchemaV1_0"
    assert props["disableLocalAuth"] is True
    assert props["minimumTlsVersionAllowed"] == "1.2"
    outputs = parse(MODULES / "eventgrid.bicep")["outputs"]
    assert accessor(outputs["endpoint"]["value"]) == "topic.properties.endpoint"
    assert "eventGrid" in parse(INFRA / "main.bicep")["modules"]
    assert "EVENTS_TOPIC_ENDPOINT" in parse(INFRA / "main.bicep")["outputs"]


def test_zone_redundant_deployments_get_zone_redundant_storage() -> None:
    main = parse(INFRA / "main.bicep")
    skus = main["variables"]["zoneRedundantSkus"]["value"]
    allowed = next(
        d["argument"] for d in main["parameters"]["storageSku"]["decorators"] if d["type"] == "allowed"
    )
    assert set(skus) == set(allowed), "every allowed SKU needs its zone-redundant twin"
    assert set(skus.values()) <= {"Standard_ZRS", "Standard_GZRS", "Standard_RAGZRS"}
    assert skus["Standard_GRS"] == "Standard_GZRS"
    assert skus["Standard_LRS"] == "Standard_ZRS"
    chosen = main["variables"]["effectiveStorageSku"]["value"]["operator"]
    assert chosen["operands"]["condition"] == "zoneRedundant"
    assert chosen["operands"]["true_value"]["operator"]["operands"] == {
        "operand_1": "zoneRedundantSkus",
        "operand_2": "storageSku",
    }
    assert body(main["modules"]["storage"])["params"]["skuName"] == "effectiveStorageSku"


def test_cloud_specific_values_come_from_the_environment() -> None:
    """The login endpoint follows the cloud the template is deployed to (sovereign clouds)."""
    main = parse(INFRA / "main.bicep")
    default = main["parameters"]["azureAuthorityHost"]["default"]
    assert accessor(default) == "environment().authentication.loginEndpoint"
    assert "login.microsoftonline.com" not in (INFRA / "main.bicep").read_text()


def test_app_insights_retention_is_left_to_the_workspace() -> None:
    """The component accepts only a fixed set of retention values; the workspace's applies anyway."""
    props = only(MODULES / "monitoring.bicep", "Microsoft.Insights/components")["properties"]
    assert "RetentionInDays" not in props
    workspace = only(MODULES / "monitoring.bicep", "Microsoft.OperationalInsights/workspaces")
    assert workspace["properties"]["retentionInDays"] == "retentionInDays"


def test_key_vault_rbac_soft_delete_purge_protection() -> None:
    props = only(MODULES / "keyvault.bicep", "Microsoft.KeyVault/vaults")["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props


def test_application_insights_on_log_analytics_by_identity() -> None:
    path = MODULES / "monitoring.bicep"
    only(path, "Microsoft.OperationalInsights/workspaces")
    props = only(path, "Microsoft.Insights/components")["properties"]
    assert props["WorkspaceResourceId"]["operator"]["operands"]["operand_1"] == "workspace"
    assert props["DisableLocalAuth"] is True
    # With local auth off, the host sends telemetry with the managed identity.
    settings = app_settings()
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identityClientId};Authorization=AAD"
    )


# ---------------------------------------------------------------------------
# app settings: the contract with core/settings.py


def test_every_setting_the_code_reads_is_set_by_bicep() -> None:
    wanted = code_settings() - LOCAL_ONLY
    assert wanted, "no settings found in the code"
    missing = wanted - set(app_settings())
    assert not missing, f"settings the code reads but Bicep does not set: {sorted(missing)}"


def test_every_bicep_setting_is_read_by_the_code_or_the_platform() -> None:
    known = (code_settings() - LOCAL_ONLY) | PLATFORM_SETTINGS
    unknown = set(app_settings()) - known
    assert not unknown, f"settings Bicep sets that nothing reads: {sorted(unknown)}"
    assert not set(app_settings()) & LOCAL_ONLY


def test_no_flex_unsupported_or_key_based_settings() -> None:
    settings = app_settings()
    assert not set(settings) & FORBIDDEN_SETTINGS
    for text in strings(parse(MODULES / "functionapp.bicep")):
        assert "AccountKey=" not in text
        assert "InstrumentationKey=" not in text


def test_setting_values() -> None:
    settings = app_settings()
    path = MODULES / "functionapp.bicep"
    assert settings["AUTH_MODE"] == "entra"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    # Host storage by service URI from the account's own endpoints (sovereign clouds), not by name.
    assert "AzureWebJobsStorage__accountName" not in settings
    assert settings["AzureWebJobsStorage__blobServiceUri"] == "storageBlobEndpoint"
    assert settings["AzureWebJobsStorage__queueServiceUri"] == "storageQueueEndpoint"
    assert settings["AzureWebJobsStorage__tableServiceUri"] == "storageTableEndpoint"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["TABLES_ENDPOINT"] == "storageTableEndpoint"
    assert settings["EVENTS_TOPIC_ENDPOINT"] == "eventsTopicEndpoint"
    assert settings["INVENTORY_SCHEDULE"] == "inventorySchedule"
    assert settings["DESTINATION_HOSTS"] == "destinationHosts"
    main = parse(INFRA / "main.bicep")
    passed = body(main["modules"]["functionApp"])["params"]
    for name, output in (
        ("storageBlobEndpoint", "blobEndpoint"),
        ("storageQueueEndpoint", "queueEndpoint"),
        ("storageTableEndpoint", "tableEndpoint"),
    ):
        assert accessor(passed[name]) == f"storage.outputs.{output}", name
    assert accessor(passed["eventsTopicEndpoint"]) == "eventGrid.outputs.endpoint"
    outputs = parse(MODULES / "storage.bicep")["outputs"]
    for output, service in (("blobEndpoint", "blob"), ("queueEndpoint", "queue"), ("tableEndpoint", "table")):
        assert accessor(outputs[output]["value"]) == f"storage.properties.primaryEndpoints.{service}"
    assert settings["KEY_VAULT_URL"] == "keyVaultUri"
    # The OAuth client secrets are Key Vault references (versionless: follow rotation).
    for name in (
        "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
        "INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET",
    ):
        operands = settings[name]["operator"]["operands"]
        assert operands["true_value"] == ""
        reference = resolve(path, operands["false_value"])
        assert re.fullmatch(
            r"@Microsoft\.KeyVault\(SecretUri=\$\{keyVaultUri\}secrets/\$\{\w+\}/\)", reference
        )


def test_oauth_client_secrets_are_secure_and_only_reach_key_vault() -> None:
    main = parse(INFRA / "main.bicep")
    for name in ("azureClientSecretsOAuthClientSecret", "azureDevOpsOAuthClientSecret"):
        decorators = {d["type"] for d in main["parameters"][name]["decorators"]}
        assert "secure" in decorators, name
        for module_name, module in main["modules"].items():
            params = body(module)["params"]
            if name in strings(params):
                assert module_name == "keyVault", f"{name} reaches module {module_name}"
    secret = only(MODULES / "keyvault-secret.bicep", "Microsoft.KeyVault/vaults/secrets")
    assert secret["properties"]["value"] == "value"
    value_param = parse(MODULES / "keyvault-secret.bicep")["parameters"]["value"]
    assert "secure" in {d["type"] for d in value_param["decorators"]}
    assert not any("secret" in o.lower() and "name" not in o.lower() for o in main.get("outputs", {}))


# ---------------------------------------------------------------------------
# role assignments


def test_least_privilege_role_assignments() -> None:
    path = MODULES / "rbac.bicep"
    tree = parse(path)
    symbols = {name: entry["type"] for name, entry in tree["resources"].items()}
    variables = {name: v["value"] for name, v in tree["variables"].items()}
    found: dict[str, str] = {}
    for name, entry in resources(path, "Microsoft.Authorization/roleAssignments").items():
        config = body(entry)
        role = config["properties"]["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role_id = variables[role["parameters"]["resource_name_1"]]
        role_name = next(r for r, guid in ROLE_IDS.items() if guid == role_id)
        scope = config.get("scope")
        assert scope is not None, f"{name} would land on the whole resource group"
        scope_symbol = scope if isinstance(scope, str) else scope["operator"]["operands"]["operand_1"]
        assert symbols[scope_symbol] == ROLE_SCOPES[role_name], f"{name} scoped to {symbols[scope_symbol]}"
        assert config["properties"]["principalType"] == "ServicePrincipal"
        assert config["properties"]["principalId"] == "principalId"
        assert config["name"]["function"]["type"] == "guid"
        found[role_name] = name
    assert set(found) == set(ROLE_IDS), found

    # Blob Data Owner on the account, as the Flex Consumption samples assign it (the host creates
    # and lists its own containers); the containers it needs first still exist up front.
    main = parse(INFRA / "main.bicep")
    assert main["variables"]["hostContainerNames"]["value"] == [
        "azure-webjobs-hosts",
        "azure-webjobs-secrets",
    ]
    params = body(main["modules"]["rbac"])["params"]
    assert accessor(params["eventGridTopicName"]) == "eventGrid.outputs.name"
    assert accessor(params["storageAccountName"]) == "storage.outputs.name"
    # The app is created only once its identity holds the roles.
    assert "rbac" in body(main["modules"]["functionApp"])["dependsOn"]


# ---------------------------------------------------------------------------
# Portal monitoring


def alert_rules() -> dict[str, dict[str, Any]]:
    path = MODULES / "alerts.bicep"
    rules = resources(path, "Microsoft.Insights/scheduledQueryRules")
    prelude = resolve(path, "eventsPrelude")
    out = {}
    for name, entry in rules.items():
        config = body(entry)
        criteria = config["properties"]["criteria"]["allOf"]
        assert len(criteria) == 1
        query = resolve(path, criteria[0]["query"]).replace("${eventsPrelude}", prelude)
        out[name] = {"config": config, "criterion": criteria[0], "query": query}
    return out


def test_alert_rules_cover_the_failure_kinds() -> None:
    rules = alert_rules()
    assert set(rules) == {
        "rotationFailed",
        "leaseRevokeFailed",
        "http5xxRate",
        "functionErrors",
        "expiringUnmanaged",
        "timerHeartbeat",
    }
    assert '"rotation.failed"' in rules["rotationFailed"]["query"]
    assert "ev.connectionId" in rules["rotationFailed"]["query"]
    assert '"lease.revoke_failed"' in rules["leaseRevokeFailed"]["query"]
    assert "ev.leaseId" in rules["leaseRevokeFailed"]["query"]
    assert "requests" in rules["http5xxRate"]["query"]
    assert "toint(resultCode) >= 500" in rules["http5xxRate"]["query"]
    assert "success == false" in rules["functionErrors"]["query"]
    assert "exceptions" in rules["functionErrors"]["query"]
    assert '"credential.expiring"' in rules["expiringUnmanaged"]["query"]
    assert "now() + 7d" in rules["expiringUnmanaged"]["query"]
    for name, rule in rules.items():
        props = rule["config"]["properties"]
        assert props["enabled"] is True, name
        assert props["scopes"] == ["appInsightsId"], name
        assert props["actions"]["actionGroups"] == "actionGroups", name
        criterion = rule["criterion"]
        assert criterion["operator"] == "GreaterThan", name
        assert criterion["metricMeasureColumn"] in rule["query"], name
    # The heartbeat looks back 15 minutes for both timers that must run every minute.
    heartbeat = rules["timerHeartbeat"]
    assert heartbeat["config"]["properties"]["windowSize"] == "PT15M"
    for timer in ("rotation_timer", "lease_expiry_timer"):
        assert f'"{timer}"' in heartbeat["query"]
    # The expiring-credential events come once a day per credential: the window covers a day.
    assert rules["expiringUnmanaged"]["config"]["properties"]["windowSize"] == "P1D"


def test_alerts_and_docs_name_the_functions_as_the_worker_registers_them() -> None:
    """The HTTP function is `http_app_func` (AsgiFunctionApp's name), not `api`."""
    from tests.test_function_app import _indexed  # the worker's own indexing, in a fresh interpreter

    names = {f["name"] for f in _indexed()}
    assert names == {
        "http_app_func",
        "rotation_timer",
        "lease_expiry_timer",
        "reconcile_timer",
        "inventory_timer",
    }
    description = alert_rules()["functionErrors"]["config"]["properties"]["description"]
    deploy_doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    for name in names:
        assert name in description, name
        assert f"`{name}`" in deploy_doc, name
    assert "(`api`," not in deploy_doc


def test_the_smoke_test_is_not_counted_as_a_5xx() -> None:
    path = MODULES / "alerts.bicep"
    marker = resolve(path, "smokeTestMarker")
    workflow = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert f"/api/health?{marker}" in workflow
    rules = alert_rules()
    for name in ("http5xxRate", "functionErrors"):
        query = rules[name]["query"].replace("${smokeTestMarker}", marker)
        assert f'url !has "{marker}"' in query, name


def test_event_queries_match_the_log_contract() -> None:
    """The alerts read `BROKER_EVENT {json}` lines exactly as core/events.py writes them."""
    from core import events

    prelude = resolve(MODULES / "alerts.bicep", "eventsPrelude")
    assert events.PREFIX == EVENT_PREFIX
    assert f'message startswith "{EVENT_PREFIX}"' in prelude
    assert f"substring(message, {len(EVENT_PREFIX)})" in prelude
    assert "tostring(ev.event)" in prelude


def test_action_group_is_a_parameter() -> None:
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["actionGroupId"]["default"] == ""
    assert body(main["modules"]["alerts"])["params"]["actionGroupId"] == "actionGroupId"
    group = resources(MODULES / "alerts.bicep", "Microsoft.Insights/actionGroups")
    assert len(group) == 1
    assert next(iter(group.values()))["config"]["condition"] == "createActionGroup"


def test_workbook_shows_rotations_leases_and_errors() -> None:
    workbook = only(MODULES / "workbook.bicep", "Microsoft.Insights/workbooks")
    assert workbook["kind"] == "shared"
    assert workbook["properties"]["category"] == "workbook"
    content = json.loads((INFRA / "workbook.json").read_text())
    assert content["version"] == "Notebook/1.0"
    assert content["fallbackResourceIds"] == [resolve(MODULES / "workbook.bicep", "placeholder")]
    queries = {
        item["name"]: item["content"]["query"] for item in content["items"] if "query" in item["content"]
    }
    assert '"rotation.succeeded"' in queries["rotations-over-time"]
    assert '"rotation.failed"' in queries["rotations-over-time"]
    assert "arg_max(timestamp" in queries["leases-by-state"]
    for event in ("lease.created", "lease.revoked", "lease.revoke_failed"):
        assert f'"{event}"' in queries["leases-by-state"]
    assert '"reconcile.fixed"' in queries["reconciler-fixes"]
    assert "resultCode" in queries["http-5xx-over-time"]
    assert "success == false" in queries["function-failures"]
    assert queries["exceptions"].startswith("exceptions")
    every = "\n".join(queries.values())
    for event in EVENTS:
        assert f'"{event}"' in every, event
    for name, query in queries.items():
        if query.startswith("traces"):
            assert f"substring(message, {len(EVENT_PREFIX)})" in query, name


# ---------------------------------------------------------------------------
# parameters, azd, pipeline, docs


def test_parameters_file_matches_main() -> None:
    declared = parse(INFRA / "main.bicep")["parameters"]
    document = json.loads((INFRA / "main.parameters.json").read_text())
    given = set(document["parameters"])
    assert given <= set(declared), sorted(given - set(declared))
    required = {name for name, spec in declared.items() if spec.get("default") is None}
    assert required <= given, sorted(required - given)
    assert document["parameters"]["environmentName"]["value"] == "${AZURE_ENV_NAME}"


def test_azure_yaml_for_azd_up() -> None:
    document = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert document["name"] == "azure-credential-broker"
    assert document["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    service_name, service = next(iter(document["services"].items()))
    assert service == {"project": ".", "language": "python", "host": "function"}
    # azd finds the Function App by its azd-service-name tag.
    site = only(MODULES / "functionapp.bicep", "Microsoft.Web/sites")
    extra_tags = {k.strip("'"): v for k, v in site["tags"]["function"]["parameters"]["arg_2"].items()}
    tag = extra_tags["azd-service-name"]
    assert tag == service_name
    outputs = parse(INFRA / "main.bicep")["outputs"]
    assert f"SERVICE_{service_name.upper()}_NAME" in outputs


def test_deploy_workflow_uses_oidc_tests_then_deploys() -> None:
    document = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    triggers = document.get("on", document.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "workflow_dispatch"} <= set(triggers)
    jobs = document["jobs"]

    test_steps = jobs["test"]["steps"]
    assert any(step.get("run", "").strip() == "make test" for step in test_steps)
    setup = next(step for step in test_steps if str(step.get("uses", "")).startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"

    deploy = jobs["deploy"]
    assert deploy["needs"] == "test"
    # One production deployment at a time, whatever ref started it; never cancelled half-way.
    assert deploy["concurrency"] == {"group": "deploy-production", "cancel-in-progress": False}
    assert "concurrency" not in document, "a workflow-wide group would also queue pull-request tests"
    # Variables reach scripts through env:, never pasted into the script text (shell injection).
    for job in jobs.values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), (
                f"step {step.get('name')!r} expands an expression in run:"
            )
    assert deploy["permissions"]["id-token"] == "write"
    steps = deploy["steps"]
    login = next(step for step in steps if str(step.get("uses", "")).startswith("azure/login@"))
    assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}
    text = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "creds:" not in text
    assert "client-secret" not in text
    assert "secrets." not in text, "the workflow must not need a stored secret"
    runs = [step.get("run", "") for step in steps]
    infra_at = next(i for i, run in enumerate(runs) if "az deployment group create" in run)
    app_at = next(i for i, run in enumerate(runs) if "config-zip" in run)
    assert infra_at < app_at, "Bicep first, then the app package"
    assert "--template-file infra/main.bicep" in runs[infra_at]
    required = {
        name
        for name, spec in parse(INFRA / "main.bicep")["parameters"].items()
        if spec.get("default") is None
    }
    for name in required:
        assert f"{name}=" in runs[infra_at], f"the workflow does not pass {name}"


def test_deploy_doc_covers_the_operator_steps() -> None:
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    for needle in (
        "Broker.Admin",
        "Broker.Operator",
        "Broker.Reader",
        "AUTH_AUDIENCE",
        "/organization/app-connections/azure/oauth/callback",
        "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID",
        "INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_ID",
        "azd up",
        "Rollback",
        "federated",
        "connectionId",
        "leaseId",
        "pycep",
    ):
        assert needle in text, needle
    for event in EVENTS:
        assert event in text, event


# ---------------------------------------------------------------------------
# checkov


def test_every_checkov_suppression_is_justified() -> None:
    for path in bicep_files():
        for line in path.read_text().splitlines():
            if "checkov:skip" not in line:
                continue
            match = re.search(r"checkov:skip=(CKV2?_AZURE_\d+):(.+)$", line)
            assert match, f"{path.name}: malformed suppression {line.strip()!r}"
            assert len(match.group(2).strip()) >= 40, f"{path.name}: {match.group(1)} needs a real reason"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checkov_passes() -> None:
    """`checkov -d infra --framework bicep --skip-download` is clean (own venv, see the script)."""
    result = subprocess.run(
        ["bash", str(CHECKOV), "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = next(r["summary"] for r in reports if r.get("check_type") == "bicep")
    failed = [
        f"{c['check_id']} {c['resource']} {c['file_path']}"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert summary["parsing_errors"] == 0, "checkov could not parse a Bicep file"
    assert not failed, failed
    assert summary["failed"] == 0, summary
    assert summary["passed"] >= 20, summary
    assert result.returncode == 0, result.stderr[-2000:]
