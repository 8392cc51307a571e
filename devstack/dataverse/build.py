"""Build the emulator's context from the scenario's ``dataverse:`` section."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack.dataverse.faults import Fault, FaultInjector
from devstack.dataverse.limits import Governor, Limits
from devstack.dataverse.metadata import load_tables
from devstack.dataverse.server import ApplicationUser, DataverseContext
from devstack.dataverse.store import Store
from devstack.dataverse.webhooks import (
    DEFAULT_DELIVERY_CONCURRENCY,
    OrgInfo,
    Registration,
    Reorder,
    WebhookDispatcher,
)
from devstack.tokens import TokenIssuer
from devstack.world import World

ALL_OPERATIONS = {"create", "read", "write", "delete"}


def build_dataverse(
    scenario: dict[str, Any],
    world: World,
    issuer: TokenIssuer,
    *,
    org_url: str,
    authority: str,
    db_path: Path | None,
    time_scale: float | None = None,
) -> DataverseContext:
    section = scenario.get("dataverse") or {}
    tables = load_tables(section.get("tables") or [])
    roles: dict[str, dict[str, set[str]]] = {}
    for role, grants in (section.get("roles") or {}).items():
        roles[role] = {table: (ALL_OPERATIONS if ops == "all" else set(ops)) for table, ops in (grants or {}).items()}
    users: dict[str, ApplicationUser] = {}
    for entry in section.get("application_users") or []:
        app = world.applications.get(entry["app"])
        app_id = app.app_id if app else str(entry["app"])
        users[app_id.lower()] = ApplicationUser(
            app_id=app_id, user_id=str(entry.get("user_id") or uuid.uuid4()), roles=list(entry.get("roles") or [])
        )
    if db_path is not None and db_path.exists():
        db_path.unlink()  # each start begins from the scenario's state
    store = Store(db_path)
    for table in tables.values():
        for key in table.keys:
            store.index_key(table.logical_name, key.attributes)
    organization_id = str(section.get("organization_id") or uuid.uuid4())
    business_unit_id = str(section.get("business_unit_id") or uuid.uuid4())
    context = DataverseContext(
        tables=tables,
        store=store,
        issuer=issuer,
        org_url=org_url,
        authority=authority,
        users=users,
        roles=roles,
        organization_id=organization_id,
        business_unit_id=business_unit_id,
        changeset_failure_shape=str(section.get("changeset_failure_shape", "multipart")),
        untracked_table_behaviour=str(section.get("untracked_table_behaviour", "ignore")),
        governor=Governor(Limits.from_scenario(section.get("limits") or {}, time_scale)),
        faults=FaultInjector([Fault.from_dict(f) for f in section.get("faults") or []]),
    )
    context.webhooks = WebhookDispatcher(
        [Registration.from_dict(w) for w in section.get("webhooks") or []],
        OrgInfo(urlsplit(org_url).netloc, organization_id, business_unit_id),
        context.stats,
        # Model seconds, scaled by the time scale; unset: Dataverse's 60 s (see WebhookDispatcher).
        timeout_s=None if section.get("webhook_timeout_s") is None else float(section["webhook_timeout_s"]),
        concurrency=int(section.get("webhook_concurrency", DEFAULT_DELIVERY_CONCURRENCY)),
        reorder=Reorder.from_dict(section.get("webhook_reorder")),
    )
    return context
