"""How a Dataverse column is filled from a source row: the mapping models shared by sync jobs and webhook
routes (validated with the file that holds them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class StrictModel(BaseModel):
    """Unknown fields are errors, and a loaded model never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


TRANSFORMS = {"trim", "upper", "lower", "title", "date", "number", "integer", "default", "concat", "bool"}


class Transform(StrictModel):
    """One step: ``trim``, ``upper``/``lower``/``title``, ``date`` (formats), ``number``/``integer``,
    ``bool``, ``default`` (value), ``concat`` (fields, separator)."""

    op: str
    formats: tuple[str, ...] = ()
    value: Any = None
    fields: tuple[str, ...] = ()
    separator: str = " "
    decimal_separator: str = "."

    @field_validator("op")
    @classmethod
    def _known(cls, op: str) -> str:
        if op not in TRANSFORMS:
            raise ValueError(f"unknown transform {op!r}; use one of {sorted(TRANSFORMS)}")
        return op


class ColumnMapping(StrictModel):
    """How one Dataverse column is filled: from a source field (``source``) or a constant (``value``)."""

    source: str | None = None
    value: Any = None
    transforms: tuple[Transform, ...] = ()
    option_label: bool = False  # the source holds a choice label; map it to its value via metadata
    lookup: LookupSpec | None = None
    required: bool = False

    @model_validator(mode="after")
    def _one_origin(self) -> ColumnMapping:
        if self.source is None and self.value is None and not any(t.op == "concat" for t in self.transforms):
            raise ValueError("give 'source' (a source field), 'value' (a constant) or a 'concat' transform")
        return self


class LookupSpec(StrictModel):
    """``parentcustomerid_account@odata.bind`` to ``/accounts(accountnumber='…')``."""

    navigation: str  # the single-valued navigation property, e.g. parentcustomerid_account
    entity_set: str  # the target's entity set, e.g. accounts
    key: str  # the target's alternate-key column, e.g. accountnumber


ColumnMapping.model_rebuild()
