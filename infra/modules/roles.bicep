// Role assignments for the app's identity: storage data roles (identity-based AzureWebJobsStorage and
// deployment), Key Vault (read the credential; list properties for the expiry sweep; rotate the Dataverse
// credential, on that one object only), telemetry.
param principalId string
param storageAccountName string
param keyVaultName string
param appInsightsName string
param useCertificate bool

@description('The Key Vault secret, or certificate when useCertificate, that holds the Dataverse credential.')
param credentialName string

// A role assignment is scoped to an object that must exist (whether ARM refuses one on a secret not yet stored is
// unconfirmed), and the credential is stored after the first deployment: main.bicep passes true once it is.
@description('Grant rotation its role on the credential object (it must be in Key Vault by then).')
param grantRotationAccess bool = false

var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'
var keyVaultCertificateUserRoleId = 'db79e9a7-68ee-4b58-9aeb-b90e7c24fcba'
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// The credential's own object in the vault: Key Vault RBAC takes a single secret or certificate as a scope.
resource dataverseSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: credentialName
}

// ARM has no resource type for a certificate (Bicep has no type definition for it and warns); a role assignment
// can still name it as its scope, which is all this declaration is for.
resource dataverseCertificate 'Microsoft.KeyVault/vaults/certificates@2023-07-01' existing = {
  parent: vault
  name: credentialName
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
  }
}

resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageQueueDataContributorRoleId)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributorRoleId)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
  }
}

// The expiry sweep lists secrets and certificates (metadata only).
resource vaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultReaderRoleId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRoleId)
  }
}

// Rotating a client secret writes a new version of that secret and disables the old ones: Secrets Officer on
// that one secret, never on the vault (the vault-wide Secrets User above only reads).
resource secretRotation 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantRotationAccess && !useCertificate) {
  name: guid(dataverseSecret.id, principalId, keyVaultSecretsOfficerRoleId)
  scope: dataverseSecret
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
  }
}

// Rotating a certificate writes nothing to Key Vault: the certificate's lifetime action renews it, and rotation
// reads the new version (its private key through the certificate's backing secret, which Secrets User above
// reads). So no Certificates Officer: Certificate User, on that one certificate.
resource certificateUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantRotationAccess && useCertificate) {
  name: guid(dataverseCertificate.id, principalId, keyVaultCertificateUserRoleId)
  scope: dataverseCertificate
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCertificateUserRoleId)
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
  }
}
