"""Table metadata from the scenario: attributes, alternate keys, flags; and its EntityDefinitions shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

ATTRIBUTE_TYPES = {
    "string": "String",
    "memo": "Memo",
    "int": "Integer",
    "decimal": "Decimal",
    "money": "Money",
    "bool": "Boolean",
    "datetime": "DateTime",
    "picklist": "Picklist",
    "lookup": "Lookup",
    "uniqueidentifier": "Uniqueidentifier",
}
SYSTEM_ATTRIBUTES = {"createdon": "datetime", "modifiedon": "datetime", "versionnumber": "int"}


class MetadataError(ValueError):
    """The scenario's table definitions are malformed."""


@dataclass(frozen=True)
class Attribute:
    logical_name: str
    type: str
    max_length: int | None = None
    options: dict[int, str] = field(default_factory=dict)
    target: str | None = None  # lookup: the target table's logical name
    navigation: str | None = None  # lookup: the single-valued navigation property for @odata.bind
    required: bool = False

    @property
    def value_name(self) -> str:
        """How the column appears in JSON: lookups as ``_<name>_value``."""
        return f"_{self.logical_name}_value" if self.type == "lookup" else self.logical_name


@dataclass(frozen=True)
class AlternateKey:
    name: str
    attributes: tuple[str, ...]


@dataclass
class Table:
    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    attributes: dict[str, Attribute]
    keys: list[AlternateKey]
    change_tracking: bool = True
    bulk: bool = True
    object_type_code: int = 10000
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def schema_name(self) -> str:
        return "".join(part[:1].upper() + part[1:] for part in self.logical_name.split("_"))

    def by_value_name(self, name: str) -> Attribute | None:
        for attr in self.attributes.values():
            if attr.value_name == name:
                return attr
        return None

    def by_navigation(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes.values() if a.navigation == name), None)

    def find_key(self, names: set[str]) -> AlternateKey | None:
        return next((k for k in self.keys if set(k.attributes) == names), None)


def load_tables(entries: list[dict[str, Any]]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for index, entry in enumerate(entries):
        name = entry["logical_name"]
        primary_id = entry.get("primary_id", f"{name}id")
        attributes = {primary_id: Attribute(primary_id, "uniqueidentifier")}
        for attr_name, spec in (entry.get("attributes") or {}).items():
            kind = spec.get("type", "string")
            if kind not in ATTRIBUTE_TYPES:
                raise MetadataError(f"tables[{name}].attributes[{attr_name}]: unknown type {kind!r}")
            attributes[attr_name] = Attribute(
                attr_name,
                kind,
                max_length=spec.get("max_length", 100 if kind == "string" else None),
                options={int(k): str(v) for k, v in (spec.get("options") or {}).items()},
                target=spec.get("target"),
                navigation=spec.get("navigation", attr_name if kind == "lookup" else None),
                required=bool(spec.get("required", False)),
            )
        for system, kind in SYSTEM_ATTRIBUTES.items():
            attributes.setdefault(system, Attribute(system, kind))
        keys = [AlternateKey(k["name"], tuple(k["attributes"])) for k in entry.get("keys") or []]
        for key in keys:
            missing = [a for a in key.attributes if a not in attributes]
            if missing:
                raise MetadataError(f"tables[{name}].keys[{key.name}]: unknown attributes {missing}")
        tables[name] = Table(
            logical_name=name,
            entity_set=entry.get("entity_set", f"{name}s"),
            primary_id=primary_id,
            primary_name=entry.get("primary_name", "name"),
            attributes=attributes,
            keys=keys,
            change_tracking=bool(entry.get("change_tracking", True)),
            bulk=bool(entry.get("bulk", True)),
            object_type_code=int(entry.get("object_type_code", 10000 + index)),
        )
    for table in tables.values():
        for attr in table.attributes.values():
            if attr.type == "lookup" and attr.target not in tables:
                raise MetadataError(f"tables[{table.logical_name}].attributes[{attr.logical_name}]: unknown target")
    return tables


def entity_definition(table: Table, *, expand: set[str]) -> dict[str, Any]:
    """``EntityDefinitions(LogicalName='x')`` as real clients read it."""
    body: dict[str, Any] = {
        "MetadataId": table.metadata_id,
        "LogicalName": table.logical_name,
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        "ObjectTypeCode": table.object_type_code,
        "ChangeTrackingEnabled": table.change_tracking,
        "IsOptimisticConcurrencyEnabled": True,
        "CanUseBulkOperations": table.bulk,  # emulator flag; real metadata has no such property (UNCONFIRMED)
    }
    if "Attributes" in expand:
        body["Attributes"] = [attribute_definition(table, a) for a in table.attributes.values()]
    if "Keys" in expand:
        body["Keys"] = [
            {
                "LogicalName": key.name,
                "SchemaName": key.name,
                "KeyAttributes": list(key.attributes),
                "EntityKeyIndexStatus": "Active",
                "EntityLogicalName": table.logical_name,
            }
            for key in table.keys
        ]
    return body


def attribute_definition(table: Table, attr: Attribute) -> dict[str, Any]:
    kind = ATTRIBUTE_TYPES[attr.type]
    body: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{kind}AttributeMetadata",
        "LogicalName": attr.logical_name,
        "SchemaName": attr.logical_name,
        "AttributeType": kind,
        "AttributeTypeName": {"Value": f"{kind}Type"},
        "EntityLogicalName": table.logical_name,
        "IsPrimaryId": attr.logical_name == table.primary_id,
        "IsPrimaryName": attr.logical_name == table.primary_name,
        "RequiredLevel": {"Value": "ApplicationRequired" if attr.required else "None"},
    }
    if attr.max_length is not None:
        body["MaxLength"] = attr.max_length
    if attr.type == "lookup":
        body["Targets"] = [attr.target]
    return body


def picklist_definition(table: Table, attr: Attribute) -> dict[str, Any]:
    """``.../Attributes(LogicalName='x')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$expand=OptionSet``."""
    body = attribute_definition(table, attr)
    body["OptionSet"] = {
        "Options": [
            {
                "Value": value,
                "Label": {
                    "UserLocalizedLabel": {"Label": label, "LanguageCode": 1033},
                    "LocalizedLabels": [{"Label": label, "LanguageCode": 1033}],
                },
            }
            for value, label in sorted(attr.options.items())
        ]
    }
    return body
