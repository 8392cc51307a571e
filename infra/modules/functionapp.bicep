// Flex Consumption (FC1) plan and the Python 3.13 function app: managed identity on, HTTPS only,
// TLS 1.2, FTPS off, identity-based storage for the host and for deployment.
param location string
param name string
param tags object
param storageAccountName string
param storageBlobEndpoint string
param deploymentContainer string
param maximumInstanceCount int
param instanceMemoryMB int
param userAssignedIdentityId string = ''
param appSettings array

var useUserAssigned = !empty(userAssignedIdentityId)

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: useUserAssigned ? 'SystemAssigned, UserAssigned' : 'SystemAssigned'
    userAssignedIdentities: useUserAssigned ? {
      '${userAssignedIdentityId}': {}
    } : null
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainer}'
          // the identity the app uses for AzureWebJobsStorage reads its package too
          authentication: useUserAssigned ? {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: userAssignedIdentityId
          } : {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
  }
}

output name string = site.name
output id string = site.id
output principalId string = site.identity.principalId
output hostName string = site.properties.defaultHostName
