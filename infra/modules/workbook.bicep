// Azure Monitor workbook "Credential broker": rotations over time, leases by
// state (from the broker's events) and errors. Its content is infra/workbook.json
// (kept as plain JSON so that it can be edited in the Portal and pasted back);
// the Application Insights resource ID is filled in here.

@description('Azure region.')
param location string

@description('Tags applied to the workbook.')
param tags object = {}

@description('Resource ID of the Application Insights component the workbook reads.')
param appInsightsId string

@description('Display name of the workbook in the Portal.')
param displayName string = 'Credential broker'

var placeholder = '__APPINSIGHTS_RESOURCE_ID__'
var content = replace(loadTextContent('../workbook.json'), placeholder, appInsightsId)

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, appInsightsId, 'credential-broker-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: toLower(appInsightsId)
    serializedData: content
    version: '1.0'
  }
}

output id string = workbook.id
