// Event Grid topic for the broker's events (CloudEvents 1.0): rotations,
// deliveries, lease revoke failures, expiring credentials. Local (SAS key)
// auth is disabled: the broker publishes with its managed identity (EventGrid
// Data Sender, modules/rbac.bicep); teams subscribe mail, Teams or webhooks.

@description('Name of the Event Grid topic.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the topic.')
param tags object = {}

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  // checkov:skip=CKV_AZURE_193:The broker on Flex Consumption without VNet integration publishes over the public endpoint; local (SAS) auth is off, so only Entra ID tokens with EventGrid Data Sender are accepted. See docs/DEPLOY.md "Network hardening".
  name: name
  location: location
  tags: tags
  // Its own identity, for identity-based delivery (Service Bus, Event Hubs, dead-letter storage)
  // from the subscriptions teams add.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    minimumTlsVersionAllowed: '1.2'
  }
}

output id string = topic.id
output name string = topic.name
output endpoint string = topic.properties.endpoint
