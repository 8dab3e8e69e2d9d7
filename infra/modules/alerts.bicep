// Portal monitoring: log-search alert rules on Application Insights, routed to
// an action group. Three rules read the broker's structured events
// (`BROKER_EVENT {json}` lines in `traces`, see docs/DEPLOY.md), three read the
// Functions request and exception telemetry (tests/test_kql.py runs every
// query's filters over real event lines).

@description('Azure region of the alert rules.')
param location string

@description('Tags applied to the rules and the action group.')
param tags object = {}

@description('Resource ID of the Application Insights component the rules query.')
param appInsightsId string

@description('Prefix of the rule names.')
param namePrefix string

@description('Resource ID of an existing action group to notify. Empty: none (or the one created from alertEmailAddress).')
param actionGroupId string = ''

@description('E-mail address for a new action group created here. Empty: no action group is created.')
param alertEmailAddress string = ''

@description('Percentage of HTTP requests answered with 5xx (over 5 minutes, at least 10 requests) that raises the 5xx alert.')
@minValue(1)
@maxValue(100)
param http5xxPercentThreshold int = 5

var createActionGroup = !empty(alertEmailAddress)
// The deploy workflow's smoke test calls /api/health with this marker; its answers while the
// new package starts are not the service failing.
var smokeTestMarker = 'probe=deploy-smoke-test'
var heartbeatQuery = 'datatable(timer: string) ["rotation_timer", "lease_expiry_timer"] | join kind=leftouter (requests | where operation_Name in ("rotation_timer", "lease_expiry_timer") | summarize runs = count() by timer = operation_Name) on timer | where isnull(runs) | summarize missing = count() by timer'
var eventsPrelude = 'traces | where message startswith "BROKER_EVENT " | extend ev = parse_json(substring(message, 13)) | extend eventName = tostring(ev.event)'

resource emailActionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (createActionGroup) {
  name: '${namePrefix}-alerts'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'brokeralert'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

var existingGroups = empty(actionGroupId) ? [] : [
  actionGroupId
]
var createdGroups = createActionGroup ? [
  emailActionGroup.id
] : []
var actionGroups = concat(existingGroups, createdGroups)

resource rotationFailed 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-rotation-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: credential rotation failed'
    description: 'A client secret rotation step failed (event rotation.failed). The connection keeps a working secret; the rotator retries with backoff. Check lastError on the connection.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: '${eventsPrelude} | where eventName == "rotation.failed" | extend connectionId = tostring(ev.connectionId) | summarize failures = count() by connectionId'
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'connectionId'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource leaseRevokeFailed 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-lease-revoke-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: lease revocation failed'
    description: 'A leased password could not be revoked (event lease.revoke_failed): the user may still sign in with it. The sweeper retries with backoff; see the lease error and revoke it with DELETE /api/v1/leases/{id}.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: '${eventsPrelude} | where eventName == "lease.revoke_failed" | extend leaseId = tostring(ev.leaseId) | summarize failures = count() by leaseId'
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'leaseId'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource http5xxRate 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-http-5xx-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: HTTP 5xx rate'
    description: 'The share of API requests answered with a 5xx status is above the threshold (requests table, resultCode >= 500; the deploy smoke test is not counted).'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'requests | where isnotempty(url) and url !has "${smokeTestMarker}" | summarize total = count(), failed = countif(toint(resultCode) >= 500) | where total >= 10 | extend failedPercent = 100.0 * failed / total'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'failedPercent'
          operator: 'GreaterThan'
          threshold: http5xxPercentThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource functionErrors 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-function-errors'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: function execution errors'
    description: 'A function execution failed (requests with success == false, other than HTTP 4xx answers) or raised an exception, per function (http_app_func, rotation_timer, lease_expiry_timer, reconcile_timer, inventory_timer).'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'union (requests | where success == false and (isempty(url) or toint(resultCode) >= 500) and url !has "${smokeTestMarker}" | project operation_Name), (exceptions | project operation_Name) | summarize failures = count() by operation_Name'
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'operation_Name'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource expiringUnmanaged 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-credential-expiring-unmanaged'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: credential expiring within 7 days, no rotation'
    description: 'The inventory found an app registration credential that expires within 7 days (or has expired) and that neither a connection rotation nor a secret rotation manages (event credential.expiring with empty managedBy). Rotate it, or create a secret rotation for the app. Split by tenant.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: '${eventsPrelude} | where eventName == "credential.expiring" | extend managedBy = tostring(ev.managedBy), endDateTime = todatetime(ev.endDateTime), tenantId = tostring(ev.tenantId), credential = strcat(tostring(ev.appId), "/", tostring(ev.keyId)) | where isempty(managedBy) and endDateTime <= now() + 7d | summarize credentials = dcount(credential) by tenantId'
          timeAggregation: 'Total'
          metricMeasureColumn: 'credentials'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'tenantId'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource timerHeartbeat 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: '${namePrefix}-timer-heartbeat'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Broker: rotation or lease sweep timer has not run for 15 minutes'
    description: 'No execution of rotation_timer or lease_expiry_timer in the last 15 minutes (both run every minute by default): the worker may fail to start or to index its functions, so rotations and lease revocations are not happening. Check the Function App\'s log stream and the exceptions table.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: heartbeatQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'missing'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'timer'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
    }
  }
}

output ruleIds array = [
  rotationFailed.id
  leaseRevokeFailed.id
  http5xxRate.id
  functionErrors.id
  expiringUnmanaged.id
  timerHeartbeat.id
]
output actionGroupIds array = actionGroups
