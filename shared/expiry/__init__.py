"""Credential-expiry monitoring: inventory (Key Vault, Entra via Graph, a live token probe), correlation
and drift, a stateful alert policy, notifiers, and the sweep/Event Grid/HTTP functions."""
