// Azure Monitor alerts on dvbridge's telemetry in Application Insights: log search (scheduled query) rules over the
// OpenTelemetry metrics the app exports to customMetrics (instrument names and attributes: docs/infra.md, "Alerts
// and the workbook"), over failed function executions in requests, and over the expiry alerts the app logs.
//
// Every rule is stateful (autoMitigate): one alert opens per dimension value (a job, a route, a credential, a
// queue) and resolves by itself once the condition no longer holds. The rules are deployed whether or not
// alertEmail is given: without it the alerts still open and resolve in Azure Monitor > Alerts, and nobody is
// e-mailed. Each rule queries with its own system-assigned identity, which holds Reader on Application Insights
// only; without an identity a rule would query with the rights of whoever last deployed it.
param location string
param name string
param tags object
param appInsightsName string

@description('E-mail address of the action group every rule notifies; empty = no action group (the alerts are still visible in Azure Monitor).')
param alertEmail string = ''

@description('Dead-lettered records (per job) or events (per webhook route) in 15 minutes above which an alert opens.')
@minValue(0)
param deadLettersPer15Min int

@description('Dataverse 429 responses in 15 minutes, per service protection limit, above which an alert opens.')
@minValue(0)
param throttledPer15Min int

@description('Webhook lag (received to processed) in seconds above which an alert opens, per route.')
@minValue(1)
param webhookLagSeconds int

@description('Days left on a credential below which an alert opens.')
@minValue(1)
param credentialDaysLeft int

var readerRoleId = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var ruleIdentity = {
  type: 'SystemAssigned'
}
var ruleActions = {
  actionGroups: empty(alertEmail) ? [] : [
    actionGroup.id
  ]
}
var everyValue = [
  '*'
]

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${name}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'dvbridge'
    enabled: true
    emailReceivers: [
      {
        name: 'owner'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// A run of a sync job failed (a revoked security role, a malformed source file...), whatever its kind (a fan-out
// chunk too). It resolves once an hour passes without a failed run of that job. One alert per job.
resource syncRunFailed 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-sync-run-failed-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: a sync run failed'
    description: 'A dvbridge.sync.run.duration of the job with status failed in the last hour. The run report in the function log names the cause and the fix.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT1H'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name == "dvbridge.sync.run.duration"
| extend job = tostring(customDimensions.job), status = tostring(customDimensions.status)
| where status == "failed"
| summarize failedRuns = sum(valueCount) by job
'''
          timeAggregation: 'Total'
          metricMeasureColumn: 'failedRuns'
          dimensions: [
            {
              name: 'job'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// A function execution failed (an exception, a timeout), whatever its trigger: what the run report cannot say
// because no run finished. HTTP 4xx answers (a webhook with a bad signature) are not failures of ours.
resource functionFailed 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-function-failed-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: a function execution failed'
    description: 'A function invocation in requests has success false (not an HTTP 4xx answer). Its exception is in exceptions, under the same operation_Id.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
requests
| where success == false and not(resultCode startswith "4")
| project functionName = operation_Name
'''
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'functionName'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// Records a sync run dead-lettered, or webhook events dead-lettered, above the threshold in 15 minutes; one alert
// per job or route ("job accounts", "route contacts").
resource deadLetters 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-dead-letters-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: dead letters above the threshold'
    description: 'dvbridge.sync.records and dvbridge.webhook.events with outcome dead_lettered, summed per job or route over 15 minutes, above alertDeadLettersPer15Min.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name in ("dvbridge.sync.records", "dvbridge.webhook.events")
| extend outcome = tostring(customDimensions.outcome)
| where outcome == "dead_lettered"
| extend subject = iff(name == "dvbridge.sync.records", strcat("job ", tostring(customDimensions.job)), strcat("route ", tostring(customDimensions.route)))
| summarize deadLettered = sum(valueSum) by subject
'''
          timeAggregation: 'Total'
          metricMeasureColumn: 'deadLettered'
          dimensions: [
            {
              name: 'subject'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: deadLettersPer15Min
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// Dataverse answered 429 more than the threshold in 15 minutes; one alert per service protection limit (its error
// code says which: number of requests, execution time or concurrent requests).
resource throttled 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-dataverse-throttled-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: Dataverse throttling (429) above the threshold'
    description: 'dvbridge.dataverse.requests with a throttle_code other than none, summed per code over 15 minutes, above alertThrottledPer15Min.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name == "dvbridge.dataverse.requests"
| extend throttle_code = tostring(customDimensions.throttle_code)
| where throttle_code != "none"
| summarize throttledResponses = sum(valueSum) by throttle_code
'''
          timeAggregation: 'Total'
          metricMeasureColumn: 'throttledResponses'
          dimensions: [
            {
              name: 'throttle_code'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: throttledPer15Min
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// A webhook event waited longer than the threshold between being received and being processed; one alert per route.
resource webhookLag 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-webhook-lag-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: webhook lag above the threshold'
    description: 'The largest dvbridge.webhook.lag of a route in 15 minutes, in seconds, above alertWebhookLagSeconds.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name == "dvbridge.webhook.lag"
| extend route = tostring(customDimensions.route)
| summarize lagSeconds = max(valueMax) by route
'''
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'lagSeconds'
          dimensions: [
            {
              name: 'route'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: webhookLagSeconds
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// The latest days-left reading of a credential is below the threshold. The expiry sweep reads them once a day, so
// the window is a day; a renewed credential's next reading resolves it. One alert per credential.
resource credentialExpiring 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-credential-days-left-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: a credential has few days left'
    description: 'The latest dvbridge.credential.days_left of a credential is below alertCredentialDaysLeft.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name == "dvbridge.credential.days_left"
| extend credential = tostring(customDimensions.credential)
| summarize arg_max(timestamp, value) by credential
| project credential, daysLeft = value
'''
          timeAggregation: 'Minimum'
          metricMeasureColumn: 'daysLeft'
          dimensions: [
            {
              name: 'credential'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'LessThan'
          threshold: credentialDaysLeft
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// A message is in a poison queue (it failed its retries): the latest backlog reading of a queue named *-poison is
// above 0. The app reports every queue it watches, 0 included, so emptying the queue resolves it.
resource poisonMessages 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-poison-queue-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: a message is in a poison queue'
    description: 'The latest dvbridge.queue.backlog of a queue whose name ends with -poison is above 0.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT15M'
    windowSize: 'P1D'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: '''
customMetrics
| where name == "dvbridge.queue.backlog"
| extend queue = tostring(customDimensions.queue)
| where queue endswith "-poison"
| summarize arg_max(timestamp, value) by queue
| project queue, poisonMessages = value
'''
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'poisonMessages'
          dimensions: [
            {
              name: 'queue'
              operator: 'Include'
              values: everyValue
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// The app's own expiry alerts (error and critical ones it sent through its channels), as log records.
resource credentialExpiryAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-credential-expiry-${name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: ruleIdentity
  properties: {
    displayName: 'dvbridge: a credential is expiring or expired'
    description: 'The app logged a credential_expiry_alert of severity error or critical.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    scopes: [
      appInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: 'traces | where message startswith "credential_expiry_alert" and severityLevel >= 3'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
        }
      ]
    }
    autoMitigate: true
    actions: ruleActions
  }
}

// Each rule's identity reads Application Insights, nothing else (Reader: */read on that one resource; the
// workspace allows resource-context reads, monitoring.bicep).
resource syncRunFailedReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, syncRunFailed.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: syncRunFailed.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource functionFailedReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionFailed.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: functionFailed.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource deadLettersReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, deadLetters.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: deadLetters.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource throttledReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, throttled.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: throttled.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource webhookLagReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, webhookLag.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: webhookLag.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource credentialExpiringReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, credentialExpiring.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: credentialExpiring.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource poisonMessagesReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, poisonMessages.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: poisonMessages.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}

resource credentialExpiryAlertReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, credentialExpiryAlert.id, readerRoleId)
  scope: appInsights
  properties: {
    principalId: credentialExpiryAlert.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
  }
}
