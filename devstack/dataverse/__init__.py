"""The Dataverse Web API v9.2 emulator (reference/dataverse-web-api.md)."""
