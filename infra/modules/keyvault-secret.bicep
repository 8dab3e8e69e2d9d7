// One secret in an existing vault. A module of its own so that the caller can
// deploy it conditionally (a value was supplied) while the secret resource
// itself stays unconditional and fully visible to the static checks.

@description('Name of the existing vault.')
param vaultName string

@description('Name of the secret.')
param secretName string

@description('Value of the secret.')
@secure()
param value string

@description('Content type recorded on the secret.')
param contentType string = 'text/plain'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:The value is an Entra app registration client secret; its lifetime is owned by the app registration, and an expiry on the vault copy would break OAuth before the real secret expires.
  parent: vault
  name: secretName
  properties: {
    value: value
    contentType: contentType
    attributes: {
      enabled: true
    }
  }
}

output name string = secret.name
output uri string = secret.properties.secretUri
