"""The Dataverse Web API v9.2 emulator: its wire protocol, limits and webhooks, as Microsoft documents them."""
