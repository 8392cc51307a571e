"""Health: liveness and the identity doctor over HTTP."""
