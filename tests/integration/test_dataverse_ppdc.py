"""Acceptance 2 of the emulator: Microsoft's own Python SDK (powerplatform-dataverse-client), with a
credential backed by devstack's Entra, works against the emulator; effects are checked in the store."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from shared.composition import token_provider

pytestmark = pytest.mark.integration


class DevstackCredential:
    """An azure-core TokenCredential over dvbridge's token provider (so, devstack's Entra)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        token = token_provider().token_for_invocation()
        return AccessToken(token.value, int(token.expires_on))


def test_microsoft_python_sdk_against_the_emulator(devstack, app_env) -> None:
    from PowerPlatform.Dataverse.client import DataverseClient
    from PowerPlatform.Dataverse.models import UpsertItem
    from PowerPlatform.Dataverse.models.filters import col

    app_env(devstack)
    url = devstack.env["DATAVERSE_URL"]
    tag = uuid.uuid4().hex[:6]

    def store(filter_text: str) -> list[dict[str, Any]]:
        """Read the emulator's state directly, not through the SDK under test."""
        token = token_provider().token_for_invocation().value
        response = requests.get(
            f"{url}/api/data/v9.2/accounts",
            params={"$filter": filter_text, "$select": "name,telephone1,accountnumber", "$orderby": "name"},
            headers={"Authorization": f"Bearer {token}"},
            verify=devstack.env["REQUESTS_CA_BUNDLE"],
            timeout=30,
        )
        return list(response.json()["value"])

    with DataverseClient(url, DevstackCredential()) as client:
        account_id = client.records.create("account", {"name": f"ppdc-{tag}-one"})
        assert client.records.retrieve("account", account_id, select=["name"]).data["name"] == f"ppdc-{tag}-one"
        client.records.update("account", account_id, {"telephone1": "555-0199"})
        client.records.upsert(
            "account", [UpsertItem(alternate_key={"accountnumber": f"P{tag}-1"}, record={"name": f"ppdc-{tag}-key"})]
        )
        client.records.upsert(
            "account",
            [
                UpsertItem(alternate_key={"accountnumber": f"P{tag}-{i}"}, record={"name": f"ppdc-{tag}-multi-{i}"})
                for i in range(2, 5)
            ],
        )
        many = client.records.create("account", [{"name": f"ppdc-{tag}-bulk-a"}, {"name": f"ppdc-{tag}-bulk-b"}])
        query = client.query.builder("account").select("name").where(col("name").startswith(f"ppdc-{tag}"))
        pages = list(query.page_size(3).execute_pages())
        batch = client.batch.new()
        changeset = batch.changeset()
        changeset.records.create("account", {"name": f"ppdc-{tag}-batch"})
        changeset.records.update("account", account_id, {"telephone1": "555-0200"})
        result = batch.execute()

    assert len(many) == 2
    assert [r.status_code for r in result.responses] == [204, 204]
    rows = store(f"startswith(name,'ppdc-{tag}')")
    assert [r["name"] for r in rows] == sorted(
        [
            f"ppdc-{tag}-one",
            f"ppdc-{tag}-key",
            *(f"ppdc-{tag}-multi-{i}" for i in range(2, 5)),
            f"ppdc-{tag}-bulk-a",
            f"ppdc-{tag}-bulk-b",
            f"ppdc-{tag}-batch",
        ]
    )
    one = next(r for r in rows if r["name"] == f"ppdc-{tag}-one")
    assert one["telephone1"] == "555-0200"  # the change set's update landed
    assert next(r for r in rows if r["name"] == f"ppdc-{tag}-key")["accountnumber"] == f"P{tag}-1"
    # A paged query over 7 records at 3 per page (the batch record was created after it).
    assert [len(p) for p in pages] == [3, 3, 1]
