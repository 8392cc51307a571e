"""The identity chain: managed identity -> Key Vault -> Dataverse credential -> Entra token.

Submodules import the Azure SDKs; import them lazily from function bodies, never at indexing time.
"""
