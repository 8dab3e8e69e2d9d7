// The broker's own identity: one user-assigned managed identity used for
// Table Storage, Key Vault, the host storage, the deployment container and
// Application Insights ingestion (DefaultAzureCredential with AZURE_CLIENT_ID).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
