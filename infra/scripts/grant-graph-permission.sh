#!/bin/sh
# ARM cannot grant a Microsoft Graph app role. This gives the function app's managed identity
# Application.Read.All (read app registrations' credential end dates for the expiry sweep and the doctor).
# Run once, as a Privileged Role Administrator (or Global Administrator):
#   AZURE_PRINCIPAL_ID=<the app identity's object id, an output of main.bicep> ./infra/scripts/grant-graph-permission.sh
set -eu
: "${AZURE_PRINCIPAL_ID:?the managed identity's principal (object) id: azd env get-value AZURE_PRINCIPAL_ID}"
GRAPH_APP_ID=00000003-0000-0000-c000-000000000000             # Microsoft Graph
APPLICATION_READ_ALL=9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30      # Application.Read.All (application permission)
graph_sp=$(az ad sp show --id "$GRAPH_APP_ID" --query id --output tsv)
existing=$(az rest --method GET \
  --url "https://graph.microsoft.com/v1.0/servicePrincipals/${AZURE_PRINCIPAL_ID}/appRoleAssignments" \
  --query "value[?appRoleId=='${APPLICATION_READ_ALL}'] | length(@)" --output tsv)
if [ "$existing" != "0" ]; then
  echo "Application.Read.All is already granted"; exit 0
fi
az rest --method POST \
  --url "https://graph.microsoft.com/v1.0/servicePrincipals/${AZURE_PRINCIPAL_ID}/appRoleAssignments" \
  --headers "Content-Type=application/json" \
  --body "{\"principalId\":\"${AZURE_PRINCIPAL_ID}\",\"resourceId\":\"${graph_sp}\",\"appRoleId\":\"${APPLICATION_READ_ALL}\"}" \
  --output none
echo "Granted Application.Read.All to ${AZURE_PRINCIPAL_ID}"
