// azure-credential-broker: the whole service in one resource group.
//
//   managed identity -> storage (host + deployment container + state tables)
//                    -> Key Vault (RBAC mode)
//                    -> Log Analytics + Application Insights
//                    -> Event Grid topic (the broker's CloudEvents)
//                    -> Flex Consumption Function App (Python 3.11)
//                    -> alert rules + workbook
//
// Deploy: `azd up` (main.parameters.json holds azd's ${VAR} placeholders), or
// `az deployment group create -g <rg> -f infra/main.bicep -p environmentName=...
// authAudience=...` (docs/DEPLOY.md, .github/workflows/deploy.yml).
// Resource-group scope, so the deploying principal needs rights on the group
// only (Contributor + Role Based Access Control Administrator).

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(32)
@description('Environment name (azd: AZURE_ENV_NAME); part of every resource name.')
param environmentName string

@description('Region of every resource. Must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Instance memory of the Flex Consumption plan, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum number of instances the Function App scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Spread the Function App across availability zones (region must support it for Flex Consumption).')
param zoneRedundant bool = false

@description('Storage redundancy for the host storage and the state tables (geo-redundant by default). With zoneRedundant, its zone-redundant twin is used: LRS->ZRS, GRS->GZRS, RAGRS->RAGZRS.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

@description('Prefix of every state table name (TABLE_PREFIX); empty for a storage account of its own, as here.')
param tablePrefix string = ''

@description('State tables created up front, one per entity kind, without TABLE_PREFIX (tests/test_infra.py keeps this list in step with the TABLE constants in the code). The app also creates a missing table itself.')
param stateTableNames array = [
  'AuditLog'
  'AppConnections'
  'AppConnectionNames'
  'OAuthStates'
  'Rotations'
  'RotationDue'
  'SecretRotations'
  'DynamicSecrets'
  'DynamicSecretUsers'
  'Leases'
  'LeaseIndex'
  'CredentialInventory'
  'InventoryScans'
]

@description('Public base URL of the broker (SITE_URL; OAuth redirect URIs start with it). Empty: https://<function app>.azurewebsites.net')
param siteUrl string = ''

@description('Entra ID authority host (AZURE_AUTHORITY_HOST). Default: this cloud\'s login endpoint.')
param azureAuthorityHost string = environment().authentication.loginEndpoint

@description('Microsoft Graph root (GRAPH_ENDPOINT). Change for sovereign clouds.')
param graphEndpoint string = 'https://graph.microsoft.com'

@description('Azure DevOps root (AZURE_DEVOPS_ENDPOINT).')
param azureDevOpsEndpoint string = 'https://dev.azure.com'

@description('Tenant that issues callers\' access tokens (AUTH_TENANT_ID). Empty: this subscription\'s tenant.')
param authTenantId string = ''

@minLength(1)
@description('Application (client) ID of the broker API app registration (AUTH_AUDIENCE): the aud of its v2 access tokens.')
param authAudience string

@description('Client ID of the operator OAuth app for Azure Client Secrets connections. Empty: the OAuth method is off.')
param azureClientSecretsOAuthClientId string = ''

@secure()
@description('Client secret of that OAuth app; stored in Key Vault. Empty: keep the secret already in the vault.')
param azureClientSecretsOAuthClientSecret string = ''

@description('Client ID of the operator OAuth app for Azure DevOps connections. Empty: the OAuth method is off.')
param azureDevOpsOAuthClientId string = ''

@secure()
@description('Client secret of that OAuth app; stored in Key Vault. Empty: keep the secret already in the vault.')
param azureDevOpsOAuthClientSecret string = ''

@description('NCRONTAB (with seconds) of the rotation timer (ROTATION_SCHEDULE).')
param rotationSchedule string = '0 * * * * *'

@description('NCRONTAB (with seconds) of the lease expiry sweep (EXPIRY_SWEEP_SCHEDULE); leases are revoked at most one interval late.')
param expirySweepSchedule string = '0 * * * * *'

@description('NCRONTAB (with seconds) of the reconciler (RECONCILE_SCHEDULE).')
param reconcileSchedule string = '30 */5 * * * *'

@description('NCRONTAB (with seconds) of the credential inventory (INVENTORY_SCHEDULE); hourly by default.')
param inventorySchedule string = '0 0 * * * *'

@description('Credentials ending within this many days (or ended) are inventoried and raise Broker.Credential.Expiring (EXPIRY_WARNING_DAYS).')
@minValue(1)
@maxValue(365)
param expiryWarningDays int = 30

@description('Comma-separated host[:port] globs a destination vaultUrl/endpoint must match (DESTINATION_HOSTS); add your sovereign cloud\'s suffixes.')
param destinationHosts string = '*.vault.azure.net,*.azconfig.io'

@description('Days revoked leases are kept for audit (LEASE_RETENTION_DAYS).')
@minValue(1)
@maxValue(3650)
param leaseRetentionDays int = 30

@description('Days Log Analytics keeps the logs the alerts and the workbook read.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

@description('Resource ID of an existing action group the alerts notify. Empty: none (see alertEmailAddress).')
param actionGroupId string = ''

@description('E-mail address for an action group created by this deployment. Empty: none is created.')
param alertEmailAddress string = ''

@description('HTTP 5xx percentage (5-minute window, at least 10 requests) that raises the 5xx alert.')
@minValue(1)
@maxValue(100)
param http5xxPercentThreshold int = 5

@description('Tags applied to every resource.')
param tags object = {}

var resourceToken = toLower(uniqueString(resourceGroup().id, environmentName, location))
var allTags = union(tags, {
  'azd-env-name': environmentName
  application: 'azure-credential-broker'
})
var functionAppName = 'func-broker-${resourceToken}'
var effectiveAuthTenantId = empty(authTenantId) ? subscription().tenantId : authTenantId
var deploymentContainerName = 'deployment-package'
var hostContainerNames = [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]
var zoneRedundantSkus = {
  Standard_LRS: 'Standard_ZRS'
  Standard_ZRS: 'Standard_ZRS'
  Standard_GRS: 'Standard_GZRS'
  Standard_GZRS: 'Standard_GZRS'
  Standard_RAGRS: 'Standard_RAGZRS'
  Standard_RAGZRS: 'Standard_RAGZRS'
}
var effectiveStorageSku = zoneRedundant ? zoneRedundantSkus[storageSku] : storageSku
var tableNames = [for tableName in stateTableNames: '${tablePrefix}${tableName}']
var azureClientSecretsOAuthSecretName = 'inf-app-connection-azure-client-secrets-client-secret'
var azureDevOpsOAuthSecretName = 'inf-app-connection-azure-devops-client-secret'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-broker-${resourceToken}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-broker-${resourceToken}'
    appInsightsName: 'appi-broker-${resourceToken}'
    location: location
    tags: allTags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'stbroker${resourceToken}'
    location: location
    tags: allTags
    skuName: effectiveStorageSku
    deploymentContainerName: deploymentContainerName
    hostContainerNames: hostContainerNames
    tableNames: tableNames
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-broker-${resourceToken}'
    location: location
    tags: allTags
    azureClientSecretsOAuthSecretName: azureClientSecretsOAuthSecretName
    azureClientSecretsOAuthClientSecret: azureClientSecretsOAuthClientSecret
    azureDevOpsOAuthSecretName: azureDevOpsOAuthSecretName
    azureDevOpsOAuthClientSecret: azureDevOpsOAuthClientSecret
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  params: {
    name: 'evgt-broker-${resourceToken}'
    location: location
    tags: allTags
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    eventGridTopicName: eventGrid.outputs.name
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: functionAppName
    planName: 'plan-broker-${resourceToken}'
    location: location
    tags: allTags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    keyVaultUri: keyVault.outputs.uri
    appInsightsConnectionString: monitoring.outputs.connectionString
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    zoneRedundant: zoneRedundant
    siteUrl: siteUrl
    azureAuthorityHost: azureAuthorityHost
    graphEndpoint: graphEndpoint
    azureDevOpsEndpoint: azureDevOpsEndpoint
    authTenantId: effectiveAuthTenantId
    authAudience: authAudience
    azureClientSecretsOAuthClientId: azureClientSecretsOAuthClientId
    azureClientSecretsOAuthSecretName: azureClientSecretsOAuthSecretName
    azureDevOpsOAuthClientId: azureDevOpsOAuthClientId
    azureDevOpsOAuthSecretName: azureDevOpsOAuthSecretName
    rotationSchedule: rotationSchedule
    expirySweepSchedule: expirySweepSchedule
    reconcileSchedule: reconcileSchedule
    leaseRetentionDays: leaseRetentionDays
    tablePrefix: tablePrefix
    inventorySchedule: inventorySchedule
    expiryWarningDays: expiryWarningDays
    eventsTopicEndpoint: eventGrid.outputs.endpoint
    destinationHosts: destinationHosts
  }
  // The identity must hold its roles before the app reads the deployment
  // container, the host storage and the Key Vault references.
  dependsOn: [
    rbac
  ]
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: allTags
    appInsightsId: monitoring.outputs.appInsightsId
    namePrefix: 'broker-${resourceToken}'
    actionGroupId: actionGroupId
    alertEmailAddress: alertEmailAddress
    http5xxPercentThreshold: http5xxPercentThreshold
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  params: {
    location: location
    tags: allTags
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

// azd and the pipeline read these.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = subscription().tenantId
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_BROKER_NAME string = functionApp.outputs.name
output SITE_URL string = functionApp.outputs.siteUrl
output OAUTH_REDIRECT_URI string = '${functionApp.outputs.siteUrl}/organization/app-connections/azure/oauth/callback'
output KEY_VAULT_URL string = keyVault.outputs.uri
output BROKER_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output BROKER_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
output EVENTS_TOPIC_ENDPOINT string = eventGrid.outputs.endpoint
