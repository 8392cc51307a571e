"""The reconciler against devstack's Dataverse: real change-tracking reads (paging, delta links, deleted
entities) through DataverseClient drive the right synthetic events. Storage and the ordering guard are the
unit tests' in-memory fakes."""

from __future__ import annotations

import uuid

import pytest

from shared.composition import reset_worker, worker
from shared.webhooks.processor import EVENT_QUEUE
from shared.webhooks.reconciler import AppliedState, Reconciler
from shared.webhooks.routes import RoutesFile
from tests.unit.test_webhook_reconciler import FakeApplied, ReconcileStorage

pytestmark = pytest.mark.integration

ROUTES = RoutesFile.model_validate(
    {
        "routes": [
            {"match": {"source": "dataverse", "table": "dvb_shipment"}, "handler": {"kind": "blob", "container": "c"}}
        ]
    }
)


def test_deltas_with_updates_and_deletes_drive_the_right_events(devstack, app_env) -> None:
    app_env(devstack)
    reset_worker()
    client, metadata = worker().dataverse(), worker().metadata()
    storage, applied = ReconcileStorage(), FakeApplied()
    reconciler = Reconciler(storage, client, metadata, ROUTES, applied, initial_full=False)  # type: ignore[arg-type]
    tag = uuid.uuid4().hex[:6]

    def create(name: str) -> str:
        return client.create("dvb_shipments", {"dvb_name": f"rc-{tag}-{name}", "dvb_carrier": "UPS",
                                               "dvb_trackingnumber": f"{name}{tag}"})  # fmt: skip

    keep, gone, seen = create("keep"), create("gone"), create("seen")
    assert reconciler.run().tables["dvb_shipment"].status == "initialized"
    assert storage.messages(EVENT_QUEUE) == []

    client.update("dvb_shipments", keep, {"dvb_name": f"rc-{tag}-changed"})
    client.delete("dvb_shipments", gone)
    client.update("dvb_shipments", seen, {"dvb_name": f"rc-{tag}-seen2"})
    version = int(client.get("dvb_shipments", seen)["versionnumber"])  # type: ignore[index]
    applied.states[("dvb_shipment", seen)] = AppliedState(version, False)  # its webhook arrived

    table = reconciler.run().tables["dvb_shipment"]
    assert table.status == "reconciled", table.error
    events = {m["event"]["record_id"]: m["event"] for m in storage.messages(EVENT_QUEUE)}
    assert events[keep]["message"] == "Update"
    assert events[keep]["attributes"]["dvb_name"] == f"rc-{tag}-changed"
    assert events[keep]["row_version"] == events[keep]["attributes"]["versionnumber"]
    assert events[gone]["message"] == "Delete"
    assert seen not in events
    assert table.in_step >= 1

    before = len(storage.messages(EVENT_QUEUE))
    assert reconciler.run().tables["dvb_shipment"].enqueued == 0  # the checkpoint moved
    assert len(storage.messages(EVENT_QUEUE)) == before
