"""Bulk messages on standard tables, as Microsoft documents them:
``POST /<set>/Microsoft.Dynamics.CRM.{CreateMultiple,UpdateMultiple,UpsertMultiple}`` with
``{"Targets": [...]}``. Atomic: any error rolls the whole request back.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devstack.dataverse.metadata import Table
from devstack.dataverse.odata import ODataSyntaxError, parse_key_segment
from devstack.dataverse.server import (
    JSON_TYPE,
    ApplicationUser,
    DataverseContext,
    DataverseFault,
    _stored_key_value,
    check_required,
    check_unique_keys,
    convert_body,
    entity_reference,
    find,
    require,
)

ACTIONS = {"CreateMultiple", "UpdateMultiple", "UpsertMultiple"}


async def execute_bulk(
    ctx: DataverseContext, request: Request, user: ApplicationUser, table: Table, action: str
) -> Response:
    if request.method != "POST":
        raise DataverseFault(405, "0x80040227", f"{action} accepts only POST.")
    if not table.bulk:
        # The exact error for a table without bulk support is UNCONFIRMED (Microsoft's docs do not show it).
        raise DataverseFault(
            400, "0x80040203", f"The '{action}' message is not supported for the '{table.logical_name}' entity."
        )
    require(ctx, user, table, "create" if action == "CreateMultiple" else "write")
    if action == "UpsertMultiple":
        require(ctx, user, table, "create")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise DataverseFault(400, "0x80048d19", f"Invalid JSON. {exc}") from exc
    targets = body.get("Targets") if isinstance(body, dict) else None
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise DataverseFault(400, "0x80040203", "The request must have a 'Targets' collection of entities.")
    expected_type = f"Microsoft.Dynamics.CRM.{table.logical_name}"
    for index, target in enumerate(targets):
        declared = str(target.get("@odata.type", "")).lstrip("#")
        if declared != expected_type:
            raise DataverseFault(
                400,
                "0x80040203",
                f"Targets[{index}]: '@odata.type' must be '{expected_type}' (all targets belong to one table).",
            )
    with ctx.store.transaction():
        if action == "CreateMultiple":
            ids = [_create(ctx, table, t) for t in targets]
            return JSONResponse(
                {"@odata.context": f"{ctx.root}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids},
                media_type=JSON_TYPE,
            )
        if action == "UpdateMultiple":
            seen: set[str] = set()
            for target in targets:
                if "@odata.id" in target:
                    raise DataverseFault(
                        400, "0x80040203", "Using alternate keys with Web API and UpdateMultiple is not supported."
                    )
                record_id = str(target.get(table.primary_id) or "").lower()
                if not record_id:
                    raise DataverseFault(400, "0x80040203", f"Each target must carry {table.primary_id}.")
                if record_id in seen:
                    continue  # UpdateMultiple applies the first of duplicate keys and silently ignores the rest
                seen.add(record_id)
                existing = ctx.store.get(table.logical_name, record_id)
                if existing is None:
                    raise DataverseFault(404, "0x80040217", f"{table.logical_name} With Ids = {record_id} Do Not Exist")
                data = convert_body(ctx, table, _without_annotations(target))
                data.pop(table.primary_id, None)
                check_unique_keys(ctx, table, {**existing.data, **data}, existing.id)
                ctx.store.update(existing, data)
            return Response(status_code=204)
        _upsert_all(ctx, table, targets)
        return Response(status_code=204)


def _without_annotations(target: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in target.items() if k not in ("@odata.type", "@odata.id")}


def _create(ctx: DataverseContext, table: Table, target: dict[str, Any]) -> str:
    data = convert_body(ctx, table, _without_annotations(target))
    record_id = str(data.pop(table.primary_id, None) or uuid.uuid4())
    if ctx.store.get(table.logical_name, record_id) is not None:
        raise DataverseFault(412, "0x80040237", "Cannot insert duplicate key.")
    check_required(table, data)
    check_unique_keys(ctx, table, data, None)
    return ctx.store.insert(table.logical_name, record_id, data).id


def _target_key(ctx: DataverseContext, table: Table, target: dict[str, Any]) -> str | dict[str, Any] | None:
    odata_id = target.get("@odata.id")
    if odata_id:
        name, key_text = entity_reference(ctx, str(odata_id))
        if name != table.entity_set or key_text is None:
            raise DataverseFault(400, "0x80040203", f"Invalid @odata.id '{odata_id}'.")
        try:
            return parse_key_segment(key_text)
        except ODataSyntaxError as exc:
            raise DataverseFault(400, "0x0", str(exc)) from exc
    if target.get(table.primary_id):
        return str(target[table.primary_id]).lower()
    return None


def _upsert_all(ctx: DataverseContext, table: Table, targets: list[dict[str, Any]]) -> None:
    keys_seen: set[str] = set()
    for target in targets:
        key = _target_key(ctx, table, target)
        if key is not None:
            marker = json.dumps(key, sort_keys=True)
            if marker in keys_seen:
                # Duplicate keys make UpsertMultiple fail (documented); the error code is UNCONFIRMED.
                raise DataverseFault(
                    400, "0x80040203", "The Targets collection contains more than one record with the same key."
                )
            keys_seen.add(marker)
        existing = find(ctx, table, key, must_exist=False) if key is not None else None
        body = _without_annotations(target)
        if existing is not None:
            data = convert_body(ctx, table, body)
            data.pop(table.primary_id, None)
            if isinstance(key, dict):
                for name in key:
                    data.pop(name, None)
            check_unique_keys(ctx, table, {**existing.data, **data}, existing.id)
            ctx.store.update(existing, data)
            continue
        if isinstance(key, dict) and any(name in body for name in key):
            # An alternate-key column repeated in the body: Microsoft's Python SDK got this 400 on the create path
            # (PowerPlatform-Dataverse-Client PR #127); the update path tolerates it.
            raise DataverseFault(400, "0x80040216", "An unexpected error occurred.")
        data = convert_body(ctx, table, body)
        if isinstance(key, dict):
            for name, value in key.items():
                data[name] = _stored_key_value(table, name, value)
        record_id = str(data.pop(table.primary_id, None) or (key if isinstance(key, str) else uuid.uuid4()))
        check_required(table, data)
        check_unique_keys(ctx, table, data, None)
        ctx.store.insert(table.logical_name, record_id, data)
