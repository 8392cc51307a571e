"""Acceptance 3: 50 warm invocations within one token lifetime cost 1 managed-identity token request,
1 Key Vault GET per secret (plus one challenge) and 1 Entra token request, counted by devstack."""

from __future__ import annotations

import textwrap

import pytest

from tests.devstack_process import run_python

pytestmark = pytest.mark.integration

INVOCATIONS = 50

# A fresh interpreter plays the worker: module-level singletons start empty, as after a cold start.
WORKER = textwrap.dedent(
    f"""
    import json
    from shared.composition import dataverse_token

    tokens = [dataverse_token() for _ in range({INVOCATIONS})]
    print(json.dumps({{"distinct": len({{t.value for t in tokens}}), "sources": [t.source for t in tokens]}}))
    """
)


def test_warm_invocations_reuse_every_token(devstack) -> None:
    devstack.reset_stats()
    out = run_python(WORKER, devstack)
    assert out["distinct"] == 1
    assert out["sources"][0] == "identity_provider"
    assert set(out["sources"][1:]) == {"cache"}

    secret_path = f"GET /secrets/{devstack.env['DATAVERSE_CLIENT_SECRET_NAME']}/"
    mi = devstack.stats("mi")
    vault = devstack.stats("keyvault")
    entra = devstack.stats("entra")
    assert mi["requests"] == {"GET /msi/token": {"200": 1}}
    assert vault["paths"] == {secret_path: {"401": 1, "200": 1}}  # the challenge, then one authorised GET
    assert entra["requests"]["POST /{tenant}/oauth2/v2.0/token"] == {"200": 1}
    assert sum(entra["tokens_issued"][devstack.env["DATAVERSE_CLIENT_ID"]].values()) == 1
