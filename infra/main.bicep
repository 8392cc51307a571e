// dvbridge on Azure: a Flex Consumption function app with a managed identity, identity-only storage,
// an RBAC Key Vault holding the Dataverse credential and the alert channel URLs, telemetry with an operations
// workbook, and Azure Monitor alert rules over that telemetry.
// Syntax is kept to what pycep-parser 0.5.1 (checkov's) reads: no user-defined types, no `.?`/`??`,
// no lambdas, no imports, no spread. `az bicep build` is still the compiler of record (DEPLOY.md).
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(20)
@description('azd environment name: names and tags every resource.')
param environmentName string

param location string = resourceGroup().location

@description('The Dataverse environment URL, e.g. https://contoso.crm4.dynamics.com')
param dataverseUrl string

@description('Tenant of the app registration used for Dataverse.')
param dataverseTenantId string = subscription().tenantId

@description('Application (client) ID of the app registration used for Dataverse.')
param dataverseClientId string

@description('Key Vault secret holding the client secret (leave empty when a certificate is used).')
param dataverseClientSecretName string = 'dataverse-client-secret'

@description('Key Vault certificate for certificate authentication (instead of a secret).')
param dataverseCertificateName string = ''

// Rotation's role on the credential (Secrets Officer on the secret; Certificate User on the certificate) is scoped
// to that one object, which is stored after the first deployment: set this once it is in the vault (DEPLOY.md).
@description('true once the Dataverse secret or certificate is in Key Vault: grants rotation its role on that one object.')
param grantRotationAccess bool = false

@description('Entity sets the app writes, probed by the doctor, e.g. accounts,contacts')
param dataverseTables string = ''

@description('Expiry alert channels: kind:secret-name, comma-separated (kinds teams, slack, json).')
param expiryChannels string = ''

@description('App registrations whose credentials the sweep watches (default: the Dataverse app).')
param expiryAppIds string = ''

// Optional user-assigned identity: the app then uses it for storage, deployment and Key Vault, and it gets the
// same roles as the system identity (which is always on). All three come from `az identity show`.
@description('Optional user-assigned identity: its resource id (empty = system identity only).')
param userAssignedIdentityId string = ''

@description('The user-assigned identity client id (AZURE_CLIENT_ID, AzureWebJobsStorage__clientId).')
param userAssignedIdentityClientId string = ''

@description('The user-assigned identity principal (object) id: the role assignments go to it.')
param userAssignedIdentityPrincipalId string = ''

@description('DATAVERSE_CONCURRENCY_BUDGET: Dataverse requests in flight over all instances together (the application user allows 52 per web server).')
@minValue(1)
@maxValue(52)
param dataverseConcurrencyBudget int = 48

@description('SYNC_CHUNK_CONCURRENCY: Dataverse requests per fan-out work item.')
param syncChunkConcurrency int = 2

// Timer schedules (six-field NCRONTAB, UTC). The Functions host resolves each timer's %SETTING% from the
// app settings; one left unset disables that timer ("failed indexing"). Defaults: each job's `schedule` in
// sync_jobs.yaml, the expiry sweep's daily 06:00 and the rotation's every 10 minutes (tests/infra/test_binding_settings.py
// keeps them equal).
@description('SYNC_SCHEDULE_ACCOUNTS: timer of the accounts job.')
param syncScheduleAccounts string = '0 */15 * * * *'

@description('SYNC_SCHEDULE_CONTACTS: timer of the contacts job.')
param syncScheduleContacts string = '0 */15 * * * *'

@description('SYNC_SCHEDULE_SHIPMENTS_OUT: timer of the shipments-out job.')
param syncScheduleShipmentsOut string = '0 */5 * * * *'

@description('EXPIRY_SWEEP_SCHEDULE: timer of the credential expiry sweep.')
param expirySweepSchedule string = '0 0 6 * * *'

@description('ROTATION_SCHEDULE: timer of the credential rotation (starts one before expiry, moves one in progress on).')
param rotationSchedule string = '0 */10 * * * *'

@description('WEBHOOK_RECONCILE_SCHEDULE: timer of the webhook reconciler (lost events back from change tracking).')
param webhookReconcileSchedule string = '0 */5 * * * *'

@description('WEBHOOK_WATCH_SCHEDULE: timer of the failed webhook delivery watcher.')
param webhookWatchSchedule string = '0 1-59/5 * * * *'

// Flex Consumption refuses a cap below 40 in most regions and applies it to each function group (HTTP, queue,
// timer...) rather than to the whole app, so the cap cannot keep the app inside the Dataverse per-user limits:
// the instances share one concurrency budget through storage instead (DATAVERSE_CONCURRENCY_BUDGET; DEPLOY.md).
@description('Flex Consumption maximumInstanceCount (40 to 1000). It does not protect Dataverse: the instances share DATAVERSE_CONCURRENCY_BUDGET through storage.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Alert rules (modules/alerts.bicep) are always deployed: without alertEmail their alerts open and resolve in
// Azure Monitor > Alerts and nobody is e-mailed. Thresholds are per 15 minutes where a rate is meant.
@description('E-mail address the alert rules notify (an action group); empty = no action group, the alerts are still in Azure Monitor > Alerts.')
param alertEmail string = ''

@description('Alert when a sync job dead-letters more records, or a webhook route more events, than this in 15 minutes.')
@minValue(0)
param alertDeadLettersPer15Min int = 10

@description('Alert when Dataverse answers 429 more often than this in 15 minutes (per service protection limit).')
@minValue(0)
param alertThrottledPer15Min int = 20

@description('Alert when a webhook event waits longer than this many seconds between received and processed.')
@minValue(1)
param alertWebhookLagSeconds int = 300

@description('Alert when a credential has fewer days left than this.')
@minValue(1)
param alertCredentialDaysLeft int = 14

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
  application: 'dvbridge'
}
var deploymentContainer = 'app-package-${resourceToken}'
var useUserAssigned = !empty(userAssignedIdentityId)
var useCertificate = !empty(dataverseCertificateName)
var keyVaultName = 'kv-${resourceToken}'
var credentialName = useCertificate ? dataverseCertificateName : dataverseClientSecretName

var credentialSetting = useCertificate ? [
  {
    name: 'DATAVERSE_CERTIFICATE_NAME'
    value: dataverseCertificateName
  }
] : [
  {
    name: 'DATAVERSE_CLIENT_SECRET_NAME'
    value: dataverseClientSecretName
  }
]
var identitySettings = useUserAssigned ? [
  {
    name: 'AZURE_CLIENT_ID'
    value: userAssignedIdentityClientId
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: userAssignedIdentityClientId
  }
] : []

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    name: resourceToken
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: 'st${resourceToken}'
    tags: tags
    deploymentContainer: deploymentContainer
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    name: keyVaultName
    tags: tags
    tenantId: subscription().tenantId
  }
}

module app 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: 'func-${resourceToken}'
    tags: tags
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainer: deploymentContainer
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    userAssignedIdentityId: userAssignedIdentityId
    appSettings: concat([
      {
        name: 'AzureWebJobsStorage__accountName'
        value: storage.outputs.name
      }
      {
        name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
        value: monitoring.outputs.connectionString
      }
      {
        name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
        value: 'Authorization=AAD'
      }
      {
        // The Python worker attaches each invocation's trace context: the app's spans are the host's children.
        name: 'PYTHON_ENABLE_OPENTELEMETRY'
        value: 'true'
      }
      {
        name: 'DATAVERSE_URL'
        value: dataverseUrl
      }
      {
        name: 'DATAVERSE_TENANT_ID'
        value: dataverseTenantId
      }
      {
        name: 'DATAVERSE_CLIENT_ID'
        value: dataverseClientId
      }
      {
        name: 'KEY_VAULT_URL'
        value: 'https://${keyVaultName}${environment().suffixes.keyvaultDns}'
      }
      {
        name: 'KEY_VAULT_RESOURCE_ID'
        value: vault.outputs.id
      }
      {
        name: 'DATAVERSE_TABLES'
        value: dataverseTables
      }
      {
        name: 'DATAVERSE_CONCURRENCY_BUDGET'
        value: string(dataverseConcurrencyBudget)
      }
      {
        name: 'SYNC_CHUNK_CONCURRENCY'
        value: string(syncChunkConcurrency)
      }
      {
        name: 'EXPIRY_CHANNELS'
        value: expiryChannels
      }
      {
        name: 'EXPIRY_APP_IDS'
        value: empty(expiryAppIds) ? dataverseClientId : expiryAppIds
      }
      {
        name: 'SYNC_SCHEDULE_ACCOUNTS'
        value: syncScheduleAccounts
      }
      {
        name: 'SYNC_SCHEDULE_CONTACTS'
        value: syncScheduleContacts
      }
      {
        name: 'SYNC_SCHEDULE_SHIPMENTS_OUT'
        value: syncScheduleShipmentsOut
      }
      {
        name: 'EXPIRY_SWEEP_SCHEDULE'
        value: expirySweepSchedule
      }
      {
        name: 'ROTATION_SCHEDULE'
        value: rotationSchedule
      }
      {
        name: 'WEBHOOK_RECONCILE_SCHEDULE'
        value: webhookReconcileSchedule
      }
      {
        name: 'WEBHOOK_WATCH_SCHEDULE'
        value: webhookWatchSchedule
      }
    ], credentialSetting, identitySettings)
  }
}

// Rotation's role goes only to the identity that rotates: the one the app authenticates to Key Vault with.
module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: app.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: vault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    useCertificate: useCertificate
    credentialName: credentialName
    grantRotationAccess: grantRotationAccess && !useUserAssigned
  }
}

// The identity the app authenticates with needs the roles: with a user-assigned one, that is it (storage,
// deployment, Key Vault, rotation); the system identity keeps its read roles, as telemetry still uses it.
module userAssignedRoles 'modules/roles.bicep' = if (useUserAssigned) {
  name: 'roles-user-assigned'
  params: {
    principalId: userAssignedIdentityPrincipalId
    storageAccountName: storage.outputs.name
    keyVaultName: vault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    useCertificate: useCertificate
    credentialName: credentialName
    grantRotationAccess: grantRotationAccess
  }
}

// Alert rules over the app's telemetry in Application Insights, each with its own identity (Reader there only).
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    name: resourceToken
    tags: tags
    appInsightsName: monitoring.outputs.appInsightsName
    alertEmail: alertEmail
    deadLettersPer15Min: alertDeadLettersPer15Min
    throttledPer15Min: alertThrottledPer15Min
    webhookLagSeconds: alertWebhookLagSeconds
    credentialDaysLeft: alertCredentialDaysLeft
  }
}

output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_KEY_VAULT_NAME string = vault.outputs.name
output AZURE_KEY_VAULT_URL string = 'https://${keyVaultName}${environment().suffixes.keyvaultDns}'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_PRINCIPAL_ID string = app.outputs.principalId
// The identity the app calls Key Vault and Graph with: infra/scripts/grant-graph-permission.sh grants it Graph's roles.
output AZURE_APP_PRINCIPAL_ID string = useUserAssigned ? userAssignedIdentityPrincipalId : app.outputs.principalId
output FUNCTIONS_BASE_URL string = 'https://${app.outputs.hostName}'
