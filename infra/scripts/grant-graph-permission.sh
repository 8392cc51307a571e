#!/bin/sh
# ARM cannot grant a Microsoft Graph app role, nor make an identity the owner of an app registration. This gives
# the identity the app calls Graph with (AZURE_APP_PRINCIPAL_ID, an output of main.bicep):
#   Application.Read.All            read app registrations' credential end dates (expiry sweep, doctor); the sweep
#                                   may watch registrations other than the Dataverse one (EXPIRY_APP_IDS)
#   Application.ReadWrite.OwnedBy   add and remove credentials of the registrations it owns, and of no other
#   owner of the Dataverse app registration (DATAVERSE_CLIENT_ID), so that OwnedBy reaches it
# Credential rotation needs the last two; with ROTATION_ENABLED=false only the first is granted (nothing is
# revoked: DEPLOY.md says how). Never a tenant-wide write permission. Each step is checked before it is made,
# so running it again changes nothing.
# Run it once, as a Privileged Role Administrator (the app roles) who is also a Cloud Application Administrator,
# an Application Administrator or an owner of the registration (the owner), or as a Global Administrator:
#   AZURE_APP_PRINCIPAL_ID=$(azd env get-value AZURE_APP_PRINCIPAL_ID) \
#   DATAVERSE_CLIENT_ID=$(azd env get-value DATAVERSE_CLIENT_ID) ./infra/scripts/grant-graph-permission.sh
set -eu
# AZURE_PRINCIPAL_ID (the system identity) still works for a deployment without a user-assigned identity.
PRINCIPAL_ID=${AZURE_APP_PRINCIPAL_ID:-${AZURE_PRINCIPAL_ID:-}}
: "${PRINCIPAL_ID:?the app identity's principal (object) id: azd env get-value AZURE_APP_PRINCIPAL_ID}"
case $(printf '%s' "${ROTATION_ENABLED:-true}" | tr '[:upper:]' '[:lower:]') in
  false | 0 | no) ROTATION=false ;;
  *) ROTATION=true ;;
esac
if [ "$ROTATION" = true ]; then
  : "${DATAVERSE_CLIENT_ID:?the Dataverse app registration's application (client) id, which rotation renews}"
fi

GRAPH=https://graph.microsoft.com/v1.0
GRAPH_APP_ID=00000003-0000-0000-c000-000000000000               # Microsoft Graph
APPLICATION_READ_ALL=9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30        # Application.Read.All (application permission)
APPLICATION_READWRITE_OWNEDBY=18a4783c-866b-4cc7-a460-3d5e5662c884  # Application.ReadWrite.OwnedBy (application)

graph_sp=$(az ad sp show --id "$GRAPH_APP_ID" --query id --output tsv)

# grant_app_role <app role id> <its name>: the identity gets the Graph app role unless it holds it already.
grant_app_role() {
  held=$(az rest --method GET --url "$GRAPH/servicePrincipals/$PRINCIPAL_ID/appRoleAssignments" \
    --query "value[?appRoleId=='$1' && resourceId=='$graph_sp'] | length(@)" --output tsv)
  if [ "$held" != "0" ]; then
    echo "$2 is already granted to $PRINCIPAL_ID"
    return 0
  fi
  az rest --method POST --url "$GRAPH/servicePrincipals/$PRINCIPAL_ID/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\":\"$PRINCIPAL_ID\",\"resourceId\":\"$graph_sp\",\"appRoleId\":\"$1\"}" \
    --output none
  echo "Granted $2 to $PRINCIPAL_ID"
}

grant_app_role "$APPLICATION_READ_ALL" Application.Read.All
if [ "$ROTATION" = false ]; then
  echo "ROTATION_ENABLED=${ROTATION_ENABLED}: Application.ReadWrite.OwnedBy and the ownership are left out"
  exit 0
fi
grant_app_role "$APPLICATION_READWRITE_OWNEDBY" Application.ReadWrite.OwnedBy

app_object_id=$(az ad app show --id "$DATAVERSE_CLIENT_ID" --query id --output tsv)
owned=$(az rest --method GET --url "$GRAPH/applications/$app_object_id/owners?\$select=id" \
  --query "value[?id=='$PRINCIPAL_ID'] | length(@)" --output tsv)
if [ "$owned" != "0" ]; then
  echo "$PRINCIPAL_ID already owns app registration $DATAVERSE_CLIENT_ID"
else
  az rest --method POST --url "$GRAPH/applications/$app_object_id/owners/\$ref" \
    --headers "Content-Type=application/json" \
    --body "{\"@odata.id\":\"$GRAPH/directoryObjects/$PRINCIPAL_ID\"}" \
    --output none
  echo "$PRINCIPAL_ID now owns app registration $DATAVERSE_CLIENT_ID"
fi
