"""devstack: local stand-ins that speak the real wire protocols of Entra ID, the App Service
managed-identity endpoint, Key Vault and Microsoft Graph. Never deployed (see .funcignore)."""
