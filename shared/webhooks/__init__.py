"""Webhook receivers: Dataverse service endpoints and signed generic webhooks; dedupe; processors."""
