// Log Analytics + workspace-based Application Insights, and the operations workbook over its telemetry. Local (key)
// auth is off: the app's identity publishes telemetry with the Monitoring Metrics Publisher role.
param location string
param name string
param tags object

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
    features: {
      disableLocalAuth: true
      // Resource-context reads: Reader on Application Insights is enough to query its data here (the alert rules'
      // identities hold only that, alerts.bicep), no role on the whole workspace.
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

// The operations workbook, under Application Insights > Workbooks: KQL over the instruments docs/infra.md lists.
// Its JSON (infra/workbooks/dvbridge-operations.json) has no resource ids; fallbackResourceIds points its queries
// at this Application Insights when it is opened without it as its context.
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(appInsights.id, 'dvbridge-operations')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'dvbridge operations'
    category: 'workbook'
    sourceId: appInsights.id
    version: 'Notebook/1.0'
    serializedData: string(union(json(loadTextContent('../workbooks/dvbridge-operations.json')), {
      fallbackResourceIds: [
        appInsights.id
      ]
    }))
  }
}

output appInsightsName string = appInsights.name
output appInsightsId string = appInsights.id
output connectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
