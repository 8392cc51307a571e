"""Schema walk: every resource declaration in infra/ checked against the Azure management SDK's model of its type.

There is no Bicep compiler here and no Azure, but the management SDKs on PyPI carry the REST models of each
resource type: ``_attribute_map`` (each property's JSON path, flattened as ``"properties.siteConfig"``, and its
type), ``_validation`` (required, read-only, lengths and ranges), ``_subtype_map`` (polymorphic objects such as
an Event Grid destination by ``endpointType``) and the enum classes named in each model's docstring (the known
values; ARM may accept others, but a literal outside them is a mistake more often than not). The walk reads each
.bicep file with pycep-parser and reports, as :class:`Finding` (file, resource, path, message):

- a resource type, or a type and API version, with no model mapped in :data:`MODELS` (so a new resource forces
  a mapping; ``existing`` resources are checked for this only);
- a property path the model does not have (misspelt, misnested, or valid only for another polymorphic subtype),
  and a value written to a read-only property;
- a value of the wrong type (string, int, bool, object, array) where the Bicep value is a literal, or a
  parameter or variable whose type is known; a ternary is checked branch by branch, a variable is followed to its
  value, ``union(...)`` and ``concat(...)`` argument by argument; any other expression is of unknown type and
  never a type error, though the paths it reads are still checked;
- a literal (or a parameter's ``@allowed`` values or literal default) that is not a known value of the property's
  enum, or breaks the model's length or range limits;
- a required property missing from an object the Bicep writes out, including those of :data:`ALSO_REQUIRED`: what
  the REST specification or the service requires though the SDK model does not say so [4];
- a read such as ``site.properties.defaultHostName`` whose path the resource's model lacks, and a module read
  ``storage.outputs.blobEndpoint`` whose module declares no such output; module params the module does not
  declare, or leaves without a default and the caller does not give.

Model versions (the SDK packages are pinned in requirements-dev.txt):

| Bicep type@apiVersion | SDK package: models module | model API version |
|---|---|---|
| Microsoft.Web/serverfarms, Microsoft.Web/sites @2024-04-01 | azure-mgmt-web 8.0.0: v2024_04_01 | same |
| Microsoft.Storage/storageAccounts (and children) @2023-05-01 | azure-mgmt-storage 21.2.1: v2023_05_01 | same |
| Microsoft.KeyVault/vaults (and /secrets) @2023-07-01 | azure-mgmt-keyvault 10.3.1: v2023_07_01 | same |
| Microsoft.KeyVault/vaults/certificates@2023-07-01 | none: scope only [3] | - |
| Microsoft.Insights/components@2020-02-02 | azure-mgmt-applicationinsights 4.1.0: v2020_02_02 | same |
| Microsoft.Insights/workbooks@2023-06-01 | azure-mgmt-applicationinsights 4.1.0: v2023_06_01 | same |
| Microsoft.Authorization/roleAssignments@2022-04-01 | azure-mgmt-authorization 4.0.0: v2022_04_01 | same |
| Microsoft.EventGrid/systemTopics (/eventSubscriptions) @2024-06-01-preview | azure-mgmt-eventgrid 10.3.0b4 | same |
| Microsoft.Insights/actionGroups@2023-01-01 | azure-mgmt-monitor 6.0.2: v2023_01_01 | same |
| Microsoft.Insights/scheduledQueryRules@2023-03-15-preview | azure-mgmt-monitor 6.0.2: v2022_08_01_preview | [1] |
| Microsoft.OperationalInsights/workspaces@2023-09-01 | azure-mgmt-loganalytics 13.1.1 | [2] |

[1] azure-mgmt-monitor 6.0.2 has no 2023-03-15-preview models; 2022-08-01-preview is the newest older one. A
    property that 2023-03-15-preview added would be reported as unknown (then map a newer SDK).
[2] azure-mgmt-loganalytics 13.x carries one API version only, 2025-07-01, the nearest to 2023-09-01. A property
    added since 2023-09-01 would not be reported; one removed since would.
[3] ARM has no resource type for a Key Vault certificate (so no SDK model, and Bicep no type definition), yet Key
    Vault RBAC takes one as a role assignment's scope (Azure/bicep#5630). :data:`SCOPE_ONLY` lists such types: a
    declaration must be ``existing``, and only its ``id`` and ``name`` may be read.
[4] msrest flattens ``properties`` into the resource model and drops the ``required`` of properties inside it
    when ``properties`` itself is optional: the workbook spec (workbooks_API.json, 2023-06-01) requires
    ``displayName``, ``category`` and ``serializedData``, the model none. :data:`ALSO_REQUIRED` restores them, with
    the reason each one is required.

Run it alone with ``python -m tests.infra.schema_walk [infra-dir]`` (exit status 1 when it finds anything).
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from tests.infra.bicep_tree import (
    CHAIN_OPERATORS,
    BicepFile,
    Declaration,
    Segment,
    arguments,
    chain,
    children,
    function_of,
    infra_files,
    is_literal_string,
    is_ref,
    operator_of,
    unquote,
)

# -- which model describes which resource ---------------------------------------------------------------------


# An SDK model class: imported by name at run time, so the type checker knows nothing of it.
type Model = Any


@dataclass(frozen=True)
class ModelRef:
    """The SDK model of one resource type at one API version: ``write`` is checked against the declaration's
    body, ``read`` against reads of its symbol (the create-parameters model of some types lacks what ARM returns,
    such as a storage account's ``primaryEndpoints``)."""

    module: str
    write: str
    read: str
    model_api_version: str
    why: str = ""  # only where model_api_version is not the Bicep's

    def write_model(self) -> Model:
        return model_class(self.module, self.write)

    def read_model(self) -> Model:
        return model_class(self.module, self.read)


WEB = "azure.mgmt.web.v2024_04_01.models"
STORAGE = "azure.mgmt.storage.v2023_05_01.models"
KEYVAULT = "azure.mgmt.keyvault.v2023_07_01.models"
APPINSIGHTS = "azure.mgmt.applicationinsights.v2020_02_02.models"
APPINSIGHTS_WORKBOOKS = "azure.mgmt.applicationinsights.v2023_06_01.models"
AUTHORIZATION = "azure.mgmt.authorization.v2022_04_01.models"
EVENTGRID = "azure.mgmt.eventgrid.models"
MONITOR_ACTION_GROUPS = "azure.mgmt.monitor.v2023_01_01.models"
MONITOR_QUERY_RULES = "azure.mgmt.monitor.v2022_08_01_preview.models"
LOGANALYTICS = "azure.mgmt.loganalytics.models"
NEWEST_OLDER_MODEL = "no model of this API version in the pinned SDK; the newest older one"
ONLY_MODEL = "the pinned SDK carries one API version only; the nearest to the Bicep's"

# (resource type in lower case: ARM compares types case-insensitively, API version) -> model
MODELS: dict[tuple[str, str], ModelRef] = {
    ("microsoft.web/serverfarms", "2024-04-01"): ModelRef(WEB, "AppServicePlan", "AppServicePlan", "2024-04-01"),
    ("microsoft.web/sites", "2024-04-01"): ModelRef(WEB, "Site", "Site", "2024-04-01"),
    ("microsoft.storage/storageaccounts", "2023-05-01"): ModelRef(
        STORAGE, "StorageAccountCreateParameters", "StorageAccount", "2023-05-01"
    ),
    ("microsoft.storage/storageaccounts/blobservices", "2023-05-01"): ModelRef(
        STORAGE, "BlobServiceProperties", "BlobServiceProperties", "2023-05-01"
    ),
    ("microsoft.storage/storageaccounts/blobservices/containers", "2023-05-01"): ModelRef(
        STORAGE, "BlobContainer", "BlobContainer", "2023-05-01"
    ),
    ("microsoft.keyvault/vaults", "2023-07-01"): ModelRef(
        KEYVAULT, "VaultCreateOrUpdateParameters", "Vault", "2023-07-01"
    ),
    ("microsoft.keyvault/vaults/secrets", "2023-07-01"): ModelRef(
        KEYVAULT, "SecretCreateOrUpdateParameters", "Secret", "2023-07-01"
    ),
    ("microsoft.insights/components", "2020-02-02"): ModelRef(
        APPINSIGHTS, "ApplicationInsightsComponent", "ApplicationInsightsComponent", "2020-02-02"
    ),
    ("microsoft.insights/workbooks", "2023-06-01"): ModelRef(
        APPINSIGHTS_WORKBOOKS, "Workbook", "Workbook", "2023-06-01"
    ),
    ("microsoft.authorization/roleassignments", "2022-04-01"): ModelRef(
        AUTHORIZATION, "RoleAssignmentCreateParameters", "RoleAssignment", "2022-04-01"
    ),
    ("microsoft.eventgrid/systemtopics", "2024-06-01-preview"): ModelRef(
        EVENTGRID, "SystemTopic", "SystemTopic", "2024-06-01-preview"
    ),
    ("microsoft.eventgrid/systemtopics/eventsubscriptions", "2024-06-01-preview"): ModelRef(
        EVENTGRID, "EventSubscription", "EventSubscription", "2024-06-01-preview"
    ),
    ("microsoft.insights/actiongroups", "2023-01-01"): ModelRef(
        MONITOR_ACTION_GROUPS, "ActionGroupResource", "ActionGroupResource", "2023-01-01"
    ),
    ("microsoft.insights/scheduledqueryrules", "2023-03-15-preview"): ModelRef(
        MONITOR_QUERY_RULES,
        "ScheduledQueryRuleResource",
        "ScheduledQueryRuleResource",
        "2022-08-01-preview",
        NEWEST_OLDER_MODEL,
    ),
    ("microsoft.operationalinsights/workspaces", "2023-09-01"): ModelRef(
        LOGANALYTICS, "Workspace", "Workspace", "2025-07-01", ONLY_MODEL
    ),
}

# (type in lower case, API version) -> what it is: objects with no ARM resource type that a role assignment may still
# take as its scope. Declared ``existing`` only (ARM cannot create them), and read for these only:
SCOPE_ONLY: dict[tuple[str, str], str] = {
    ("microsoft.keyvault/vaults/certificates", "2023-07-01"): "a Key Vault certificate (a data-plane object)",
}
SCOPE_ONLY_READS = frozenset({"id", "name"})

# (type in lower case, API version) -> {property path: why it is required}: what a resource needs though its SDK
# model does not say so (see [4] in the module docstring). A path is reported missing only where the Bicep writes
# out every object above it.
WORKBOOK_SPEC = "required by the REST spec (workbooks_API.json 2023-06-01, WorkbookProperties)"
ALSO_REQUIRED: dict[tuple[str, str], dict[str, str]] = {
    ("microsoft.insights/workbooks", "2023-06-01"): {
        "kind": "'shared', which every new workbook is (Microsoft Learn, workbooks-automate; the model's"
        " WorkbookSharedTypeKind knows no other); without it the workbook is no shared one",
        "properties.displayName": WORKBOOK_SPEC,
        "properties.category": f"{WORKBOOK_SPEC}; 'workbook' lists it in the Workbooks gallery",
        "properties.serializedData": WORKBOOK_SPEC,
    },
}

# Keys of a resource body that are Bicep's, not the resource's: never looked up in the model.
BICEP_BODY_KEYS = frozenset({"name", "scope", "parent", "dependsOn", "depends_on"})
# What every resource symbol exposes besides its model's properties.
BICEP_RESOURCE_READS = frozenset({"id", "name", "type", "apiVersion"})
MODULE_READS = frozenset({"name", "outputs"})
CLOSE_MATCH_CUTOFF = 0.75  # difflib ratio above which a known name is offered as "did you mean"
HINT_SEARCH_DEPTH = 5  # how deep under a resource the walk looks for where a misplaced property belongs
HINT_LIMIT = 3


@cache
def model_class(module: str, name: str) -> Model:
    found: Model = getattr(importlib.import_module(module), name)
    return found


def lookup(resource_type: str, api_version: str) -> ModelRef | None:
    return MODELS.get((resource_type.lower(), api_version))


def mapped_versions(resource_type: str) -> list[str]:
    return sorted(version for (known, version) in MODELS if known == resource_type.lower())


# -- shapes: what the model expects at a path --------------------------------------------------------------------


class Kind(StrEnum):
    STRING = "string"
    INT = "int"
    NUMBER = "number"
    BOOL = "bool"
    OBJECT = "object"
    ARRAY = "array"
    ANY = "any"
    NULL = "null"
    UNKNOWN = "unknown"  # an expression whose type the walk cannot know: never a type error


ACCEPTS: dict[Kind, frozenset[Kind]] = {
    Kind.STRING: frozenset({Kind.STRING}),
    Kind.INT: frozenset({Kind.INT}),
    Kind.NUMBER: frozenset({Kind.INT, Kind.NUMBER}),  # Bicep has no float literal: an int is written
    Kind.BOOL: frozenset({Kind.BOOL}),
    Kind.OBJECT: frozenset({Kind.OBJECT}),
    Kind.ARRAY: frozenset({Kind.ARRAY}),
}
# msrest's scalar type names; the date, time and binary ones travel as JSON strings
SCALARS: dict[str, Kind] = {
    "str": Kind.STRING, "int": Kind.INT, "long": Kind.INT, "float": Kind.NUMBER, "decimal": Kind.NUMBER,
    "bool": Kind.BOOL, "object": Kind.ANY, "iso-8601": Kind.STRING, "rfc-1123": Kind.STRING, "date": Kind.STRING,
    "time": Kind.STRING, "duration": Kind.STRING, "base64": Kind.STRING, "bytearray": Kind.STRING,
    "unix-time": Kind.ANY,
}  # fmt: skip
CONSTRAINTS = ("max_length", "min_length", "maximum", "minimum", "pattern", "max_items", "min_items")


@dataclass(frozen=True)
class Shape:
    """What a model expects at one path. An object is described by one or more model classes (more than one for
    a polymorphic object whose subtype the Bicep does not fix) at a ``prefix`` inside them: a flattened model
    puts ``properties.siteConfig`` in the same class as ``location``, so ``properties`` is the prefix
    ``("properties",)`` of that class. An object without models is a map whose every value is ``item``."""

    kind: Kind
    models: tuple[Model, ...] = ()
    prefix: tuple[str, ...] = ()
    item: Shape | None = None
    enum: type[Enum] | None = None
    constraints: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        if not self.models:
            return f"{self.kind} of {self.item.label}" if self.item else str(self.kind)
        names = " | ".join(model.__name__ for model in self.models)
        return f"{names}.{'.'.join(self.prefix)}" if self.prefix else names


@dataclass(frozen=True)
class Field:
    name: str
    shape: Shape
    required: bool
    readonly: bool


UNESCAPED_DOT = re.compile(r"(?<!\\)\.")
VARTYPE = re.compile(r":vartype (\w+):(.*?)(?=\n\s*:(?:ivar|vartype|keyword|paramtype)\b|\Z)", re.DOTALL)
DOTTED_NAME = re.compile(r"~([\w.]+)")


def key_path(key: str) -> tuple[str, ...]:
    """msrest's flattened JSON key as path segments; ``\\.`` is a literal dot inside one segment."""
    return tuple(part.replace("\\.", ".") for part in UNESCAPED_DOT.split(key))


@cache
def vartypes(model: Model) -> dict[str, str]:
    """attribute -> its ``:vartype`` text from the docstrings of the model and its bases (enums are named only
    there: ``_attribute_map`` says "str")."""
    found: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        for attribute, text in VARTYPE.findall(klass.__doc__ or ""):
            found[attribute] = " ".join(text.split())
    return found


def enum_of(model: Model, attribute: str) -> type[Enum] | None:
    for dotted in DOTTED_NAME.findall(vartypes(model).get(attribute, "")):
        module, _, name = dotted.rpartition(".")
        try:
            candidate = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(candidate, type) and issubclass(candidate, Enum):
            return candidate
    return None


def parse_type(model: Model, type_name: str) -> Shape:
    """A shape from an ``_attribute_map`` type: ``str``, ``[Item]``, ``{Value}``, or a class of the model's module."""
    if type_name.startswith("[") and type_name.endswith("]"):
        return Shape(Kind.ARRAY, item=parse_type(model, type_name[1:-1]))
    if type_name.startswith("{") and type_name.endswith("}"):
        return Shape(Kind.OBJECT, item=parse_type(model, type_name[1:-1]))
    if type_name in SCALARS:
        return Shape(SCALARS[type_name])
    klass = getattr(sys.modules[model.__module__], type_name, None)
    if isinstance(klass, type) and issubclass(klass, Enum):
        return Shape(Kind.STRING, enum=klass)
    if isinstance(klass, type) and hasattr(klass, "_attribute_map"):
        return Shape(Kind.OBJECT, models=(klass,))
    return Shape(Kind.ANY)


def with_enum(shape: Shape, enum: type[Enum] | None) -> Shape:
    """Put an enum on the string inside a shape (``list[str or ~...Enum]`` names it for each item)."""
    if enum is None or shape.enum is not None:
        return shape
    if shape.kind is Kind.STRING:
        return replace(shape, enum=enum)
    if shape.item is not None and not shape.models:
        return replace(shape, item=with_enum(shape.item, enum))
    return shape


@cache
def model_fields(model: Model, prefix: tuple[str, ...]) -> dict[str, Field]:
    """The properties at ``prefix`` of a model: each key of ``_attribute_map`` one segment below it, and each
    deeper flattened path as an object of its own (``properties`` of a Site)."""
    validation: Mapping[str, Mapping[str, Any]] = getattr(model, "_validation", {})
    fields: dict[str, Field] = {}
    groups: dict[str, list[str]] = {}
    depth = len(prefix)
    for attribute, spec in model._attribute_map.items():
        path = key_path(spec["key"])
        if len(path) <= depth or path[:depth] != prefix:
            continue
        head = path[depth]
        if len(path) > depth + 1:
            groups.setdefault(head, []).append(attribute)
            continue
        rule = validation.get(attribute, {})
        shape = with_enum(parse_type(model, spec["type"]), enum_of(model, attribute))
        limits = {name: rule[name] for name in CONSTRAINTS if name in rule}
        if limits:
            shape = replace(shape, constraints=limits)
        fields[head] = Field(head, shape, bool(rule.get("required")), bool(rule.get("readonly")))
    for head, attributes in groups.items():
        if head not in fields:
            rules = [validation.get(attribute, {}) for attribute in attributes]
            fields[head] = Field(
                head, Shape(Kind.OBJECT, models=(model,), prefix=(*prefix, head)),
                required=any(rule.get("required") for rule in rules),
                readonly=all(rule.get("readonly") for rule in rules),
            )  # fmt: skip
    return fields


def shape_fields(shape: Shape) -> dict[str, Field]:
    """The properties of an object shape; for several models, each name from the first model that has it."""
    merged: dict[str, Field] = {}
    for model in shape.models:
        for name, found in model_fields(model, shape.prefix).items():
            if name not in merged:
                merged[name] = found
            elif found.shape.models and merged[name].shape.models:  # a group both have: either's properties do
                known = merged[name].shape
                both = tuple(dict.fromkeys(known.models + found.shape.models))
                merged[name] = replace(merged[name], shape=replace(known, models=both))
    return merged


@dataclass(frozen=True)
class Discriminator:
    key: str  # the JSON property that picks the subtype, e.g. endpointType
    subtypes: Mapping[str, Model]


def discriminator(model: Model) -> Discriminator | None:
    subtype_map: Mapping[str, Mapping[str, str]] = getattr(model, "_subtype_map", None) or {}
    for attribute, mapping in subtype_map.items():
        key = model._attribute_map[attribute]["key"]
        module = sys.modules[model.__module__]
        return Discriminator(key, {value: getattr(module, name) for value, name in mapping.items()})
    return None


def polymorphic_union(shape: Shape) -> Shape:
    """An object shape whose model is polymorphic widened to every subtype (when the Bicep does not say which)."""
    if shape.prefix or len(shape.models) != 1:
        return shape
    found = discriminator(shape.models[0])
    if found is None:
        return shape
    return replace(shape, models=(shape.models[0], *(m for m in found.subtypes.values() if m is not shape.models[0])))


# -- findings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Finding:
    file: str  # relative to the infra directory
    resource: str  # the symbol of the resource or module the finding is about
    path: str  # the property path inside it, e.g. properties.siteConfig.minTlsVersion
    message: str
    line: int = field(default=0, compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.resource} {self.path}: {self.message}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    names = list(known)
    same_but_case = [candidate for candidate in names if candidate.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, names, n=1, cutoff=CLOSE_MATCH_CUTOFF)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- the walk --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """Where a value is being checked: which file and declaration, the resource's root shape (to say where a
    misplaced property belongs), and the variables followed to get here (named in messages, and a guard)."""

    file: BicepFile
    resource: str
    line: int
    root: Shape
    through: tuple[str, ...] = ()

    def via(self) -> str:
        return f" (through var {' -> '.join(self.through)})" if self.through else ""


@dataclass(frozen=True)
class Literal:
    value: Any
    origin: str  # "" for a literal written in place, else e.g. "param instanceMemoryMB's @allowed"


FUNCTION_KINDS: dict[str, Kind] = {
    **dict.fromkeys(
        ("string", "to_lower", "to_upper", "unique_string", "guid", "format", "substring", "replace", "trim",
         "uri", "uri_component", "uri_component_to_string", "base64", "base64_to_string", "data_uri",
         "data_uri_to_string", "pad_left", "utc_now", "new_guid", "date_time_add", "date_time_from_epoch",
         "resource_id", "subscription_resource_id", "tenant_resource_id", "extension_resource_id",
         "management_group_resource_id", "join", "load_text_content", "load_file_as_base64"),
        Kind.STRING,
    ),
    **dict.fromkeys(("int", "length", "index_of", "last_index_of", "date_time_to_epoch", "max", "min"), Kind.INT),
    **dict.fromkeys(("bool", "empty", "contains", "starts_with", "ends_with"), Kind.BOOL),
    **dict.fromkeys(("environment", "subscription", "resource_group", "tenant", "deployment", "management_group"),
                    Kind.OBJECT),
    **dict.fromkeys(("array", "split", "range", "pick_zones", "flatten", "intersection_array"), Kind.ARRAY),
}  # fmt: skip
BOOL_OPERATORS = frozenset({
    "not", "and", "or", "equals", "not_equals", "equals_case_insensitive", "not_equals_case_insensitive",
    "greater_than", "greater_than_or_equals", "less_than", "less_than_or_equals",
})  # fmt: skip
INT_OPERATORS = frozenset({"add", "substract", "multiply", "divide", "modulo", "minus"})
PARAM_KINDS = {"string": Kind.STRING, "int": Kind.INT, "bool": Kind.BOOL, "object": Kind.OBJECT, "array": Kind.ARRAY}


def param_kind(declaration: Mapping[str, Any]) -> Kind:
    declared = declaration.get("type")
    return PARAM_KINDS.get(declared, Kind.UNKNOWN) if isinstance(declared, str) else Kind.UNKNOWN


def decorator(declaration: Mapping[str, Any], name: str) -> Any:
    for item in declaration.get("decorators", []):
        if item.get("type") == name:
            return item.get("argument")
    return None


def literal_kind(value: Any) -> Kind:
    if value is None:
        return Kind.NULL
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, int):
        return Kind.INT
    if isinstance(value, str):
        return Kind.STRING
    if isinstance(value, list):
        return Kind.ARRAY
    return Kind.OBJECT


def describe(literal: Literal) -> str:
    shown = f"'{literal.value}'" if isinstance(literal.value, str) else repr(literal.value).lower()
    return f"{shown} ({literal.origin})" if literal.origin else shown


class SchemaWalk:
    """One walk over an infra directory; :meth:`run` returns the findings, sorted."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files = {parsed.path: parsed for parsed in infra_files(self.root)}
        self.findings: list[Finding] = []

    def run(self) -> list[Finding]:
        for parsed in self.files.values():
            for declaration in parsed.resources.values():
                self.check_resource(parsed, declaration)
            for declaration in parsed.modules.values():
                self.check_module(parsed, declaration)
            self.check_reads(parsed)
        return sorted(set(self.findings))

    def report(self, context: Context | BicepFile, resource: str, path: str, message: str, line: int = 0) -> None:
        if isinstance(context, Context):
            parsed, line = context.file, line or context.line
            message += context.via()
        else:
            parsed = context
        self.findings.append(Finding(parsed.rel, resource, path, message, line))

    # -- resource bodies ------------------------------------------------------------------------------------------
    def check_resource(self, parsed: BicepFile, declaration: Declaration) -> None:
        ref = lookup(declaration.type, declaration.api_version)
        scope_only = SCOPE_ONLY.get((declaration.type.lower(), declaration.api_version))
        if ref is None and scope_only is not None:
            if not declaration.existing:
                message = (
                    f"{declaration.type} is {scope_only}: ARM has no resource type to create it;"
                    " declare it `existing`, as a role assignment's scope"
                )
                self.report(parsed, declaration.symbol, "existing", message, declaration.line)
            return
        if ref is None:
            versions = mapped_versions(declaration.type)
            if versions:
                message = (
                    f"no SDK model is mapped for {declaration.type}@{declaration.api_version}"
                    f" (mapped versions: {', '.join(versions)})"
                )
                self.report(parsed, declaration.symbol, "apiVersion", message, declaration.line)
            else:
                message = f"no SDK model is mapped for resource type {declaration.type} (add it to MODELS)"
                self.report(parsed, declaration.symbol, "type", message, declaration.line)
            return
        if declaration.existing:  # the body only names the resource: its type and version are what count
            return
        root = Shape(Kind.OBJECT, models=(ref.write_model(),))
        context = Context(parsed, declaration.symbol, declaration.line, root)
        self.check_object(dict(declaration.body), root, "", context)
        self.check_also_required(declaration, context)

    def check_also_required(self, declaration: Declaration, context: Context) -> None:
        for path, why in ALSO_REQUIRED.get((declaration.type.lower(), declaration.api_version), {}).items():
            *parents, last = path.split(".")
            node: Any = dict(declaration.body)
            for key in parents:
                node = {unquote(name): item for name, item in node.items()}.get(key)
                if not isinstance(node, Mapping) or operator_of(node) or function_of(node):
                    break  # an object built by an expression, or absent (then the model's own check speaks)
            else:
                if last not in {unquote(name) for name in node}:
                    message = f"missing property '{last}', which {declaration.type} needs: {why}"
                    self.report(context, declaration.symbol, path, message)

    def check(self, value: Any, shape: Shape, path: str, context: Context) -> None:
        """Check one Bicep value against the shape the model expects at ``path``."""
        if value is None or shape.kind is Kind.ANY:
            return
        operator = operator_of(value)
        if operator and operator[0] == "conditional":  # either branch may be deployed: check both
            self.check(operator[1]["true_value"], shape, path, context)
            self.check(operator[1]["false_value"], shape, path, context)
            return
        if is_ref(value) and value in context.file.variables and value not in context.through:
            followed = replace(context, through=(*context.through, str(value)))
            self.check(context.file.variables[value]["value"], shape, path, followed)
            return
        function = function_of(value)
        if function and (function[0], shape.kind) in {("union", Kind.OBJECT), ("concat", Kind.ARRAY)}:
            for argument in arguments(function[1]):  # each part must fit the whole
                self.check(argument, shape, path, context)
            return
        if is_ref(value) and value in context.file.params:  # its declared type first, then its literals
            declared = param_kind(context.file.params[value])
            if not self.check_kind(declared, f"(param {value})", shape, path, context):
                return
        literals = self.literals(context.file, value)
        if literals is not None:
            for literal in literals:
                self.check_literal(literal, shape, path, context)
        else:
            shown = self.describe_value(context.file, value)
            self.check_kind(self.kind_of(context.file, value), shown, shape, path, context)
        if isinstance(value, Mapping) and not operator and not function and shape.kind is Kind.OBJECT:
            self.check_object(value, shape, path, context)
        elif isinstance(value, list) and shape.kind is Kind.ARRAY and shape.item is not None:
            for index, item in enumerate(value):
                self.check(item, shape.item, f"{path}[{index}]", context)

    def check_kind(self, actual: Kind, shown: str, shape: Shape, path: str, context: Context) -> bool:
        accepted = ACCEPTS.get(shape.kind)
        if accepted is None or actual in (Kind.UNKNOWN, Kind.NULL, Kind.ANY) or actual in accepted:
            return True
        where = f" ({shape.label})" if shape.models else ""
        self.report(context, context.resource, path, f"expects {shape.kind}{where}, got {actual} {shown}")
        return False

    def check_literal(self, literal: Literal, shape: Shape, path: str, context: Context) -> None:
        if not self.check_kind(literal_kind(literal.value), describe(literal), shape, path, context):
            return
        value = literal.value
        if shape.enum is not None and isinstance(value, str):
            known = [str(member.value) for member in shape.enum]
            if value not in known:
                message = f"{describe(literal)} is not a known {shape.enum.__name__} value{did_you_mean(value, known)}"
                self.report(context, context.resource, path, f"{message}; known: {quoted(known)}")
        for name, limit in shape.constraints.items():
            if broken(name, limit, value):
                self.report(context, context.resource, path, f"{describe(literal)} breaks the model's {name} {limit!r}")

    def check_object(self, value: Mapping[str, Any], shape: Shape, path: str, context: Context) -> None:
        if not shape.models:  # a map: every value has the item shape
            if shape.item is not None:
                for key, item in value.items():
                    self.check(item, shape.item, f"{path}['{unquote(key)}']", context)
            return
        resolved = self.resolve_subtype(value, shape, path, context)
        if resolved is None:
            return
        fields = shape_fields(resolved)
        keys = {unquote(key): item for key, item in value.items()}
        for key, item in keys.items():
            if not path and key in BICEP_BODY_KEYS:
                continue
            found = fields.get(key)
            if found is None:
                hint = self.hint(key, fields, resolved, context)
                message = f"unknown property '{key}' in {resolved.label}{hint}"
                self.report(context, context.resource, join(path, key), message)
            elif found.readonly:
                message = f"'{key}' is read-only in {resolved.label}: ARM ignores what the template writes there"
                self.report(context, context.resource, join(path, key), message)
            else:
                self.check(item, found.shape, join(path, key), context)
        for name, found in fields.items():
            if found.required and name not in keys and not (not path and name in BICEP_BODY_KEYS):
                message = f"missing required property '{name}' of {resolved.label}"
                self.report(context, context.resource, join(path, name), message)

    def resolve_subtype(self, value: Mapping[str, Any], shape: Shape, path: str, context: Context) -> Shape | None:
        """The subtype a polymorphic object's discriminator literal picks; every subtype when it is not a literal;
        None (reported) when the literal names no subtype."""
        if shape.prefix or len(shape.models) != 1 or (found := discriminator(shape.models[0])) is None:
            return shape
        raw = {unquote(key): item for key, item in value.items()}.get(found.key)
        if raw is None:
            return shape  # the base model requires the discriminator: the required check reports it
        literals = self.literals(context.file, raw)
        if literals is None:
            return polymorphic_union(shape)
        models = []
        for literal in literals:
            if literal.value in found.subtypes:
                models.append(found.subtypes[literal.value])
                continue
            known = sorted(found.subtypes)
            hint = did_you_mean(str(literal.value), known)
            message = f"unknown {found.key} {describe(literal)} for {shape.label}{hint}"
            self.report(context, context.resource, join(path, found.key), f"{message}; known: {quoted(known)}")
        return replace(shape, models=tuple(dict.fromkeys(models))) if models else None

    def hint(self, key: str, fields: Mapping[str, Field], shape: Shape, context: Context) -> str:
        """Why a property may be unknown: a near spelling, another subtype's property, or one that sits
        elsewhere in the resource."""
        close = did_you_mean(key, fields)
        if close:
            return close
        for model in shape.models:
            found = discriminator(model)
            if found is None:
                continue
            owners = [value for value, sub in found.subtypes.items() if key in model_fields(sub, shape.prefix)]
            if owners:
                return f" (it is a property of {found.key} {', '.join(map(repr, owners[:HINT_LIMIT]))})"
        elsewhere = list(where_else(key, context.root))
        if elsewhere:
            return f" (the model has it at {', '.join(elsewhere[:HINT_LIMIT])})"
        return ""

    # -- values -------------------------------------------------------------------------------------------------
    def literals(self, parsed: BicepFile, value: Any, seen: frozenset[str] = frozenset()) -> list[Literal] | None:
        """The literal values a Bicep value can take, when all of them are known: a literal, each branch of a
        ternary of literals, a variable holding them, a parameter's ``@allowed`` values or its literal default."""
        if isinstance(value, bool | int) or is_literal_string(value):
            return [Literal(value, "")]
        operator = operator_of(value)
        if operator and operator[0] == "conditional":
            branches = [operator[1]["true_value"], operator[1]["false_value"]]
            found = [self.literals(parsed, branch, seen) for branch in branches if branch is not None]
            if any(part is None for part in found):
                return None
            return [literal for part in found if part for literal in part]
        if is_ref(value) and value not in seen:
            if value in parsed.variables:
                return self.literals(parsed, parsed.variables[value]["value"], seen | {str(value)})
            if value in parsed.params:
                declaration = parsed.params[value]
                allowed = decorator(declaration, "allowed")
                if isinstance(allowed, list):
                    return [Literal(item, f"param {value}'s @allowed") for item in allowed]
                default = declaration.get("default")
                if isinstance(default, bool | int) or is_literal_string(default):
                    return [Literal(default, f"param {value}'s default")]
        return None

    def kind_of(self, parsed: BicepFile, value: Any, seen: frozenset[str] = frozenset()) -> Kind:
        if is_ref(value):
            if value in parsed.params:
                return param_kind(parsed.params[value])
            if value in parsed.variables and value not in seen:
                return self.kind_of(parsed, parsed.variables[value]["value"], seen | {str(value)})
            return Kind.UNKNOWN  # a resource, module or loop variable
        operator = operator_of(value)
        if operator:
            name, operands = operator
            if name in BOOL_OPERATORS:
                return Kind.BOOL
            if name in INT_OPERATORS:
                return Kind.INT
            if name in ("conditional", "coalesce"):
                parts = [operands[key] for key in operands if key != "condition"]
                kinds = {self.kind_of(parsed, part, seen) for part in parts} - {Kind.NULL}
                return kinds.pop() if len(kinds) == 1 else Kind.UNKNOWN
            return Kind.UNKNOWN
        function = function_of(value)
        if function:
            name, parameters = function
            if name in ("concat", "union"):
                kinds = {self.kind_of(parsed, part, seen) for part in arguments(parameters)}
                return kinds.pop() if len(kinds) == 1 else Kind.UNKNOWN
            return FUNCTION_KINDS.get(name, Kind.UNKNOWN)
        return literal_kind(value)

    def describe_value(self, parsed: BicepFile, value: Any) -> str:
        if is_ref(value) and value in parsed.params:
            return f"(param {value})"
        if is_ref(value) and value in parsed.variables:
            return f"(var {value})"
        if isinstance(value, str) and not is_ref(value):
            return "(an interpolated string)"
        return "(an expression)"

    # -- modules ------------------------------------------------------------------------------------------------
    def module_file(self, parsed: BicepFile, declaration: Declaration) -> BicepFile | None:
        return self.files.get(parsed.module_file(declaration)) if declaration.module_path else None

    def check_module(self, parsed: BicepFile, declaration: Declaration) -> None:
        target = self.module_file(parsed, declaration)
        if target is None:
            if declaration.module_path:
                message = f"module file {declaration.module_path} is not in the infra directory"
                self.report(parsed, declaration.symbol, "path", message, declaration.line)
            return
        given = declaration.body.get("params", {})
        if not isinstance(given, Mapping):
            return  # params built by an expression: nothing to compare
        keys = {unquote(key): value for key, value in given.items()}
        for name, value in keys.items():
            if name not in target.params:
                message = f"module {declaration.symbol} ({target.rel}) has no param '{name}'"
                message += did_you_mean(name, target.params)
                self.report(parsed, declaration.symbol, f"params.{name}", message, declaration.line)
                continue
            expected = param_kind(target.params[name])
            actual = self.kind_of(parsed, value)
            if expected in ACCEPTS and actual in ACCEPTS and actual not in ACCEPTS[expected]:
                shown = self.describe_value(parsed, value)
                message = f"param '{name}' of {target.rel} is {expected}, given {actual} {shown}"
                self.report(parsed, declaration.symbol, f"params.{name}", message, declaration.line)
        for name, param in target.params.items():
            if name not in keys and param.get("default") is None:
                message = f"module {declaration.symbol} ({target.rel}) needs param '{name}': it has no default"
                self.report(parsed, declaration.symbol, f"params.{name}", message, declaration.line)

    # -- reads ----------------------------------------------------------------------------------------------------
    def check_reads(self, parsed: BicepFile) -> None:
        """Every ``symbol.a.b`` read anywhere in the file, against the model or the module's outputs."""
        sections: list[tuple[str, str, Any, int]] = []
        for kind, label in (("parameters", "param"), ("variables", "var"), ("outputs", "output")):
            for symbol, declaration in parsed.tree.get(kind, {}).items():
                node = declaration.get("default", declaration.get("value"))
                sections.append((label, symbol, node, parsed.line_of(kind, symbol)))
        for label, declarations in (("resource", parsed.resources), ("module", parsed.modules)):
            for symbol, declaration in declarations.items():
                sections.append((label, symbol, [declaration.condition, dict(declaration.body)], declaration.line))
        for label, symbol, node, line in sections:
            self.visit_reads(parsed, node, f"{label} {symbol}", line)

    def visit_reads(self, parsed: BicepFile, node: Any, where: str, line: int) -> None:
        operator = operator_of(node)
        if operator and operator[0] in CHAIN_OPERATORS:
            segments, inner = chain(node)
            self.check_chain(parsed, segments, where, line)
            for expression in inner:
                self.visit_reads(parsed, expression, where, line)
            return
        for child in children(node):
            self.visit_reads(parsed, child, where, line)

    def check_chain(self, parsed: BicepFile, segments: Sequence[Segment], where: str, line: int) -> None:
        if len(segments) < 2 or segments[0].kind != "name":
            return
        root, rest = segments[0].value, list(segments[1:])
        if root in parsed.modules:
            self.check_module_read(parsed, parsed.modules[root], rest, where, line)
        elif root in parsed.resources:
            declaration = parsed.resources[root]
            ref = lookup(declaration.type, declaration.api_version)
            scope_only = SCOPE_ONLY.get((declaration.type.lower(), declaration.api_version))
            if ref is None and scope_only is not None:
                head = rest[0]
                if head.kind == "name" and head.value not in SCOPE_ONLY_READS:
                    message = (
                        f"reads '{head.value}' of {scope_only}, which ARM cannot read; only"
                        f" {', '.join(sorted(SCOPE_ONLY_READS))} (in {where})"
                    )
                    self.report(parsed, root, str(head.value), message, line)
                return
            if ref is None:
                return  # reported as an unmapped type
            if declaration.loop is not None and rest and rest[0].kind == "index":
                rest = rest[1:]
            self.check_resource_read(parsed, root, ref, rest, where, line)

    def check_module_read(
        self, parsed: BicepFile, declaration: Declaration, rest: list[Segment], where: str, line: int
    ) -> None:
        head = rest[0]
        if head.kind != "name":
            return
        if head.value not in MODULE_READS:
            message = f"a module exposes only {', '.join(sorted(MODULE_READS))}, not '{head.value}' (in {where})"
            self.report(parsed, declaration.symbol, head.value, message, line)
            return
        target = self.module_file(parsed, declaration)
        if head.value != "outputs" or target is None or len(rest) < 2 or rest[1].kind != "name":
            return
        output = rest[1].value
        if output not in target.outputs:
            declared = ", ".join(sorted(target.outputs)) or "none"
            message = (
                f"module {declaration.symbol} ({target.rel}) declares no output '{output}'"
                f"{did_you_mean(output, target.outputs)}; its outputs: {declared} (in {where})"
            )
            self.report(parsed, declaration.symbol, f"outputs.{output}", message, line)

    def check_resource_read(
        self, parsed: BicepFile, symbol: str, ref: ModelRef, rest: list[Segment], where: str, line: int
    ) -> None:
        shape = Shape(Kind.OBJECT, models=(ref.read_model(),))
        path = ""
        for index, segment in enumerate(rest):
            if segment.kind == "index" and shape.kind in (Kind.ARRAY, Kind.OBJECT) and not shape.models:
                shape, path = shape.item or Shape(Kind.ANY), f"{path}[]"
                continue
            name = segment.value if segment.kind == "name" else literal_index(segment)
            if name is None or shape.kind is not Kind.OBJECT or not shape.models:
                return  # a call, an expression, or a value the model leaves open: nothing more to check
            if index == 0 and name in BICEP_RESOURCE_READS:
                return
            fields = shape_fields(polymorphic_union(shape))
            found = fields.get(name)
            path = join(path, name)
            if found is None:
                message = f"reads unknown property '{name}' of {shape.label}{did_you_mean(name, fields)} (in {where})"
                self.report(parsed, symbol, path, message, line)
                return
            shape = found.shape


def literal_index(segment: Segment) -> str | None:
    """``x['name']`` reads a property like ``x.name``."""
    return segment.value if segment.kind == "index" and is_literal_string(segment.value) else None


def broken(name: str, limit: Any, value: Any) -> bool:
    """Whether a literal breaks one of the model's ``_validation`` limits."""
    if name in ("max_length", "max_items") and isinstance(value, str | list):
        return len(value) > int(limit)
    if name in ("min_length", "min_items") and isinstance(value, str | list):
        return len(value) < int(limit)
    if name == "maximum" and isinstance(value, int) and not isinstance(value, bool):
        return value > int(limit)
    if name == "minimum" and isinstance(value, int) and not isinstance(value, bool):
        return value < int(limit)
    if name == "pattern" and isinstance(value, str):
        try:
            return re.search(limit, value) is None
        except re.error:  # a .NET pattern Python cannot read: no verdict
            return False
    return False


def where_else(key: str, root: Shape) -> Iterator[str]:
    """Paths under a resource's root shape where the model has a property named ``key`` (breadth first)."""
    queue: deque[tuple[Shape, str, int]] = deque([(root, "", 0)])
    seen: set[tuple[tuple[Model, ...], tuple[str, ...]]] = set()
    while queue:
        shape, path, depth = queue.popleft()
        while shape.item is not None and not shape.models:
            shape, path = shape.item, f"{path}[]"
        if not shape.models or (shape.models, shape.prefix) in seen or depth > HINT_SEARCH_DEPTH:
            continue
        seen.add((shape.models, shape.prefix))
        for name, found in shape_fields(shape).items():
            if name == key:
                yield join(path, name)
            queue.append((found.shape, join(path, name), depth + 1))


def walk(root: Path) -> list[Finding]:
    return SchemaWalk(root).run()


def main(argv: Sequence[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "infra"
    findings = walk(root)
    for finding in findings:
        print(finding)
    print(f"schema walk of {root}: {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
