#!/bin/sh
# azd postdeploy: subscribe expiry_event to Key Vault's expiry events (the function exists now).
# Uses the outputs azd saved from main.bicep.
set -eu
: "${AZURE_RESOURCE_GROUP:?azd sets AZURE_RESOURCE_GROUP}"
: "${AZURE_KEY_VAULT_NAME:?output of main.bicep}"
: "${AZURE_FUNCTION_APP_NAME:?output of main.bicep}"
az deployment group create \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "eventgrid-expiry" \
  --template-file "$(dirname "$0")/../modules/eventgrid.bicep" \
  --parameters location="${AZURE_LOCATION}" keyVaultName="$AZURE_KEY_VAULT_NAME" \
               functionAppName="$AZURE_FUNCTION_APP_NAME" \
  --output none
echo "Key Vault expiry events now reach ${AZURE_FUNCTION_APP_NAME}/expiry_event"
