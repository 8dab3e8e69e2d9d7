// Key Vault in RBAC mode: holds the broker's secret material (connection
// credentials, refresh tokens, written by the app) and the two operator OAuth
// client secrets (written here, read by the app through Key Vault references).

@description('Name of the vault (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Days a deleted secret or vault can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Key Vault secret name for INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET.')
param azureClientSecretsOAuthSecretName string

@description('Value of the Azure Client Secrets OAuth app client secret. Empty: keep the secret already in the vault (or none).')
@secure()
param azureClientSecretsOAuthClientSecret string = ''

@description('Key Vault secret name for INF_APP_CONNECTION_AZURE_DEVOPS_CLIENT_SECRET.')
param azureDevOpsOAuthSecretName string

@description('Value of the Azure DevOps OAuth app client secret. Empty: keep the secret already in the vault (or none).')
@secure()
param azureDevOpsOAuthClientSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration reaches the vault over its public endpoint; access is Entra RBAC only (no access policies, no shared keys). See docs/DEPLOY.md "Network hardening".
  // checkov:skip=CKV_AZURE_189:Same as CKV_AZURE_109: public network access stays enabled because the app has no private network path to the vault in this template.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// The operator's OAuth client secrets. Written only when a value is supplied,
// so a later deployment without the value keeps the stored secret.
module azureClientSecretsOAuthSecret 'keyvault-secret.bicep' = if (!empty(azureClientSecretsOAuthClientSecret)) {
  name: 'secret-azure-client-secrets-oauth'
  params: {
    vaultName: vault.name
    secretName: azureClientSecretsOAuthSecretName
    value: azureClientSecretsOAuthClientSecret
    contentType: 'text/plain; purpose=oauth-client-secret'
  }
}

module azureDevOpsOAuthSecret 'keyvault-secret.bicep' = if (!empty(azureDevOpsOAuthClientSecret)) {
  name: 'secret-azure-devops-oauth'
  params: {
    vaultName: vault.name
    secretName: azureDevOpsOAuthSecretName
    value: azureDevOpsOAuthClientSecret
    contentType: 'text/plain; purpose=oauth-client-secret'
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
