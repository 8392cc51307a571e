"""A Dataverse table's metadata as the mapping needs it, and the per-worker cache that reads it.

``TableSchema`` is built from ``EntityDefinitions(LogicalName=…)?$expand=Attributes`` and the picklist
cast (for choice labels); :class:`TableMetadata` reads each table's definition once per worker and is the
one place dvbridge asks Dataverse for table metadata.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.dataverse.addressing import table_definition_path


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # String, Memo, Integer, Decimal, Money, Boolean, DateTime, Picklist, Lookup, Uniqueidentifier
    max_length: int | None = None
    required: bool = False
    options: Mapping[str, int] = field(default_factory=dict)  # lower-case label -> value


@dataclass(frozen=True)
class TableSchema:
    logical_name: str
    columns: Mapping[str, Column]

    @classmethod
    def from_metadata(cls, entity: Mapping[str, Any], picklists: list[Mapping[str, Any]] | None = None) -> TableSchema:
        """From ``EntityDefinitions(LogicalName=…)?$expand=Attributes`` and the picklist cast's ``value``."""
        options: dict[str, dict[str, int]] = {}
        for picklist in picklists or []:
            labels = {}
            for option in (picklist.get("OptionSet") or {}).get("Options", []):
                label = ((option.get("Label") or {}).get("UserLocalizedLabel") or {}).get("Label")
                if label is not None:
                    labels[str(label).lower()] = int(option["Value"])
            options[str(picklist["LogicalName"])] = labels
        columns = {}
        for attr in entity.get("Attributes", []):
            name = str(attr["LogicalName"])
            columns[name] = Column(
                name,
                str(attr.get("AttributeType", "String")),
                attr.get("MaxLength"),
                (attr.get("RequiredLevel") or {}).get("Value") in ("ApplicationRequired", "SystemRequired")
                and not attr.get("IsPrimaryId"),
                options.get(name, {}),
            )
        return cls(str(entity["LogicalName"]), columns)


class MetadataReader(Protocol):
    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None) -> Any: ...


class TableMetadata:
    """Table definitions read once per worker: the schema for mapping, the entity set name for reads."""

    def __init__(self, client: MetadataReader) -> None:
        self._client = client
        self._schemas: dict[str, TableSchema] = {}
        self._entity_sets: dict[str, str] = {}
        self._lock = threading.Lock()

    def schema(self, table: str) -> TableSchema:
        with self._lock:
            known = self._schemas.get(table)
        if known is not None:
            return known
        path = table_definition_path(table)
        entity = self._client.request("GET", path, params={"$expand": "Attributes"}).json()
        picklists = self._client.request(
            "GET",
            f"{path}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
        ).json()
        schema = TableSchema.from_metadata(entity, picklists.get("value", []))
        with self._lock:
            self._schemas[table] = schema
            if entity.get("EntitySetName"):
                self._entity_sets[table] = str(entity["EntitySetName"])
        return schema

    def entity_set_name(self, table: str) -> str:
        with self._lock:
            known = self._entity_sets.get(table)
        if known:
            return known
        metadata = self._client.request("GET", table_definition_path(table), params={"$select": "EntitySetName"})
        name = str(metadata.json()["EntitySetName"])
        with self._lock:
            self._entity_sets[table] = name
        return name
