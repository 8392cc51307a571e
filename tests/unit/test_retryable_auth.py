"""Whether an identity failure is "not reachable now" is said once, in the diagnosis catalogue: the secret
store serves a stale secret for exactly those, and the routes answer them 503 and every other one 502."""

from __future__ import annotations

import pytest

from shared.failure_answers import failure_answer
from shared.identity.diagnosis import CATALOGUE, auth_error
from shared.identity.secret_store import key_vault_error
from tests.fakes.keyvault import vault_http_error

pytestmark = pytest.mark.unit

TRANSIENT = {"EntraUnreachable", "EntraUnavailable", "KeyVaultUnreachable", "KeyVaultUnavailable",
             "ManagedIdentityUnavailable", "DataverseUnreachable"}  # fmt: skip


def test_the_catalogue_marks_the_outages_and_nothing_else_as_retryable() -> None:
    assert {code for code, entry in CATALOGUE.items() if entry.retryable} == TRANSIENT


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_routes_answer_an_outage_503_and_a_refusal_502(code: str) -> None:
    answer = failure_answer(auth_error(code, step="key_vault"), "test_failure")
    assert answer.status == (503 if code in TRANSIENT else 502)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_key_vault_throttling_or_failing_is_explained_from_the_catalogue(status: int) -> None:
    error = key_vault_error(vault_http_error(status, "Throttled"), name="s", vault="https://kv.vault.azure.net/")
    assert (error.code, error.retryable, error.status) == ("KeyVaultUnavailable", True, status)
    assert error.cause == f"https://kv.vault.azure.net/ answered HTTP {status}."  # not "unrecognised failure"
