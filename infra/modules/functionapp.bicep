// The broker: one Python 3.11 Function App on the Flex Consumption plan (FC1).
// Every app setting the code reads is set here (tests/test_infra.py compares
// this block with core/settings.py).

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('Resource ID of the broker user-assigned managed identity.')
param identityId string

@description('Client ID of the broker user-assigned managed identity.')
param identityClientId string

@description('Blob endpoint of the storage account, with a trailing slash.')
param storageBlobEndpoint string

@description('Queue endpoint of the storage account (Functions host storage by identity).')
param storageQueueEndpoint string

@description('Table endpoint of the storage account (host storage and the state tables).')
param storageTableEndpoint string

@description('Deployment package container.')
param deploymentContainerName string

@description('Key Vault URI, with a trailing slash.')
param keyVaultUri string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Instance memory of the Flex Consumption plan, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum number of instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Spread the plan\'s instances across availability zones (not every Flex Consumption region supports it; the platform then keeps at least two always-ready instances).')
param zoneRedundant bool = false

@description('Public base URL of the broker (OAuth redirect URIs are built from it). Empty: https://<app>.azurewebsites.net')
param siteUrl string = ''

@description('Entra ID authority host used by azure-identity and by caller-token discovery.')
param azureAuthorityHost string

@description('Microsoft Graph root (the code adds /v1.0).')
param graphEndpoint string

@description('Azure DevOps root (the code adds the organization).')
param azureDevOpsEndpoint string

@description('Tenant that issues the callers\' access tokens.')
param authTenantId string

@description('Application (client) ID of the broker API app registration: the aud of its v2 access tokens.')
param authAudience string

@description('Client ID of the operator OAuth app for Azure Client Secrets connections (empty: OAuth method off).')
param azureClientSecretsOAuthClientId string = ''

@description('Key Vault secret name holding that OAuth app\'s client secret.')
param azureClientSecretsOAuthSecretName string

@description('Client ID of the operator OAuth app for Azure DevOps connections (empty: OAuth method off).')
param azureDevOpsOAuthClientId string = ''

@description('Key Vault secret name holding that OAuth app\'s client secret.')
param azureDevOpsOAuthSecretName string

@description('NCRONTAB (with seconds) of the rotation timer.')
param rotationSchedule string

@description('NCRONTAB (with seconds) of the lease expiry sweep.')
param expirySweepSchedule string

@description('NCRONTAB (with seconds) of the reconciler.')
param reconcileSchedule string

@description('Days revoked leases are kept for audit.')
param leaseRetentionDays int

@description('Prefix of every state table name.')
param tablePrefix string

@description('NCRONTAB (with seconds) of the credential inventory timer.')
param inventorySchedule string

@description('Days before expiry from which the inventory records a credential.')
param expiryWarningDays int

@description('Event Grid topic endpoint the broker publishes CloudEvents to.')
param eventsTopicEndpoint string

@description('Comma-separated host[:port] globs that a destination URL must match.')
param destinationHosts string

var effectiveSiteUrl = empty(siteUrl) ? 'https://${name}.azurewebsites.net' : siteUrl
var azureClientSecretsOAuthSecretRef = '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${azureClientSecretsOAuthSecretName}/)'
var azureDevOpsOAuthSecretRef = '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${azureDevOpsOAuthSecretName}/)'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy is a parameter (zoneRedundant), off by default because not every Flex Consumption region has zones and it adds two always-ready instances to the bill.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:The broker is a public HTTPS API (scripts, pipelines, the operator's browser on the OAuth callback); every call but /api/health needs an Entra ID token checked by the app.
  // checkov:skip=CKV_AZURE_17:Callers authenticate with Entra ID bearer tokens; mandatory client certificates would also block browsers on the OAuth callback.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales instances itself (maximumInstanceCount, zoneRedundant); siteConfig.numberOfWorkers does not apply to it.
  // checkov:skip=CKV_AZURE_213:The platform health check is not supported on Flex Consumption; GET /api/health exists and the 5xx and function-error alerts watch availability.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'broker'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      ftpsState: 'Disabled'
      appSettings: [
        // Functions host storage and telemetry, by identity (no keys anywhere). Service URIs
        // from the account's own endpoints rather than __accountName, which assumes the
        // public cloud's suffix.
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storageBlobEndpoint
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: storageQueueEndpoint
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: storageTableEndpoint
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        // The broker's own identity (DefaultAzureCredential -> managed identity).
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        // State and secrets.
        {
          name: 'TABLES_ENDPOINT'
          value: storageTableEndpoint
        }
        {
          name: 'TABLE_PREFIX'
          value: tablePrefix
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVaultUri
        }
        // Cloud endpoints and the public URL.
        {
          name: 'AZURE_AUTHORITY_HOST'
          value: azureAuthorityHost
        }
        {
          name: 'GRAPH_ENDPOINT'
          value: graphEndpoint
        }
        {
          name: 'AZURE_DEVOPS_ENDPOINT'
          value: azureDevOpsEndpoint
        }
        {
          name: 'SITE_URL'
          value: effectiveSiteUrl
        }
        // Operator OAuth apps; the secrets are Key Vault references.
        {
          name: 'INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID'
          value: azureClientSecretsOAuthClientId
        }
        {
          name: 'INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET'
          value: empty(azureClientSecretsOAuthClientId) ? '' : azureClientSecretsOAuthSecretRef
        }
        {
          name: 'INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_ID'
          value: azureDevOpsOAuthClientId
        }
        {
          name: 'INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET'
          value: empty(azureDevOpsOAuthClientId) ? '' : azureDevOpsOAuthSecretRef
        }
        // Caller authentication: Entra ID access tokens for the broker API app.
        {
          name: 'AUTH_MODE'
          value: 'entra'
        }
        {
          name: 'AUTH_TENANT_ID'
          value: authTenantId
        }
        {
          name: 'AUTH_AUDIENCE'
          value: authAudience
        }
        // Timers (used as %SETTING% in function_app.py) and retention.
        {
          name: 'ROTATION_SCHEDULE'
          value: rotationSchedule
        }
        {
          name: 'EXPIRY_SWEEP_SCHEDULE'
          value: expirySweepSchedule
        }
        {
          name: 'RECONCILE_SCHEDULE'
          value: reconcileSchedule
        }
        {
          name: 'INVENTORY_SCHEDULE'
          value: inventorySchedule
        }
        {
          name: 'LEASE_RETENTION_DAYS'
          value: string(leaseRetentionDays)
        }
        {
          name: 'EXPIRY_WARNING_DAYS'
          value: string(expiryWarningDays)
        }
        // Events (CloudEvents on Event Grid, by identity) and where destinations may point.
        {
          name: 'EVENTS_TOPIC_ENDPOINT'
          value: eventsTopicEndpoint
        }
        {
          name: 'DESTINATION_HOSTS'
          value: destinationHosts
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output siteUrl string = effectiveSiteUrl
