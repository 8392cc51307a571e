"""Webhook routes (``WEBHOOK_ROUTES_FILE``, default ``webhook_routes.yaml``): the models and the loader.

Where the file lives and when it is validated: ``shared.webhooks.routes_file``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError
from shared.mapping.spec import ColumnMapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    source: str = "dataverse"  # "dataverse" or a signed source's name
    table: str | None = None  # Dataverse events: the table's logical name
    message: tuple[str, ...] = ()  # Dataverse events: Create, Update, Delete…; empty = any

    def matches(self, source: str, table: str | None, message: str | None) -> bool:
        return (
            self.source == source
            and (self.table is None or self.table == table)
            and (not self.message or message in self.message)
        )


class BlobHandler(_Strict):
    kind: Literal["blob"]
    container: str


class HttpForwardHandler(_Strict):
    kind: Literal["http_forward"]
    url: str
    secret: str | None = None  # Key Vault secret used to sign what we forward


class UpsertHandler(_Strict):
    kind: Literal["dataverse_upsert"]
    table: str
    entity_set: str
    key: tuple[str, ...]
    mapping: dict[str, ColumnMapping]


Handler = Annotated[BlobHandler | HttpForwardHandler | UpsertHandler, Field(discriminator="kind")]


class Route(_Strict):
    match: Match
    handler: Handler


class SignedSource(_Strict):
    secret: str  # Key Vault secret name


class HeaderAuth(_Strict):
    header: str
    secret: str  # Key Vault secret name


class RoutesFile(_Strict):
    routes: tuple[Route, ...] = ()
    sources: dict[str, SignedSource] = Field(default_factory=dict)
    dataverse_header_auth: HeaderAuth | None = None

    def handlers_for(self, source: str, table: str | None, message: str | None) -> list[Any]:
        return [r.handler for r in self.routes if r.match.matches(source, table, message)]


def load_routes(path: str | Path) -> RoutesFile:
    file = Path(path)
    if not file.exists():
        return RoutesFile()  # no webhooks configured: receivers answer 404 for unknown sources
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return RoutesFile.model_validate(data)
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: not valid YAML: {exc}"]) from exc
    except ValidationError as exc:
        problems = [f"{file}: field {'.'.join(str(p) for p in e['loc'])!r}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(problems, heading="invalid webhook routes") from exc
