"""Sync job definitions (``SYNC_JOBS_FILE``, default ``sync_jobs.yaml``), validated at start-up.

Every problem is reported with the file, the job and the field, e.g.
``sync_jobs.yaml: job 'accounts' field 'mapping.name.transforms[0]': unknown transform 'upper_case'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from shared.errors import ConfigError
from shared.mapping.spec import ColumnMapping, StrictModel


class CsvSource(StrictModel):
    kind: Literal["blob_csv"]
    container: str
    prefix: str = ""
    encoding: str = "utf-8-sig"
    delimiter: str = ","
    headers: dict[str, str] = Field(default_factory=dict)  # rename source headers


class JsonlSource(StrictModel):
    kind: Literal["blob_jsonl"]
    container: str
    prefix: str = ""
    encoding: str = "utf-8"


class HttpSource(StrictModel):
    kind: Literal["http_json"]
    url: str
    paging: Literal["page_number", "cursor", "next_link"] = "next_link"
    items_field: str = "items"
    page_param: str = "page"
    cursor_param: str = "cursor"
    cursor_field: str = "next_cursor"
    next_link_field: str = "next"
    auth_header: str | None = None  # header name; its value comes from a Key Vault secret
    auth_secret: str | None = None  # Key Vault secret name
    watermark_param: str | None = None  # sent with the last watermark for incremental reads


class BlobSink(StrictModel):
    kind: Literal["blob_jsonl"]
    container: str


class HttpSink(StrictModel):
    kind: Literal["http_post"]
    url: str
    batch_size: int = Field(default=100, ge=1, le=5000)


Source = Annotated[CsvSource | JsonlSource | HttpSource, Field(discriminator="kind")]
Sink = Annotated[BlobSink | HttpSink, Field(discriminator="kind")]


class InboundJob(StrictModel):
    direction: Literal["inbound"]
    schedule: str = "0 */15 * * * *"
    source: Source
    table: str  # logical name, e.g. account
    entity_set: str  # e.g. accounts
    key: tuple[str, ...]  # alternate-key columns used for upserts
    mapping: dict[str, ColumnMapping]
    watermark_field: str | None = None  # source field whose max value is checkpointed
    strategy: Literal["auto", "bulk", "batch", "single"] = "auto"
    batch_size: int | None = Field(default=None, ge=1, le=1000)
    fan_out_threshold: int = Field(default=50_000, ge=1)

    @model_validator(mode="after")
    def _key_is_mapped(self) -> InboundJob:
        missing = [k for k in self.key if k not in self.mapping]
        if missing:
            raise ValueError(f"key column(s) {missing} must appear in 'mapping'")
        return self


class OutboundJob(StrictModel):
    direction: Literal["outbound"]
    schedule: str = "0 */15 * * * *"
    table: str
    entity_set: str
    select: tuple[str, ...] = ()
    sink: Sink


Job = Annotated[InboundJob | OutboundJob, Field(discriminator="direction")]


class JobsFile(StrictModel):
    jobs: dict[str, Job]


def load_jobs(path: str | Path) -> dict[str, InboundJob | OutboundJob]:
    """Read and validate the jobs file; raise ConfigError listing every problem with file, job and field."""
    file = Path(path)
    if not file.exists():
        raise ConfigError([f"{file}: the sync jobs file does not exist; set SYNC_JOBS_FILE or create {file.name}"])
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict) or "jobs" not in data:
        raise ConfigError([f"{file}: expected a mapping with a top-level 'jobs' section"])
    try:
        return dict(JobsFile.model_validate(data).jobs)
    except ValidationError as exc:
        raise ConfigError([_describe(file, error) for error in exc.errors()], heading="invalid sync jobs") from exc


def _describe(file: Path, error: Any) -> str:
    loc = [str(p) for p in error["loc"]]
    if len(loc) >= 2 and loc[0] == "jobs":
        job, rest = loc[1], loc[2:]
        # pydantic puts the discriminator's chosen branch in the path ("inbound", "blob_csv"); drop it.
        rest = [p for p in rest if p not in {"inbound", "outbound", "blob_csv", "blob_jsonl", "http_json", "http_post"}]
        return f"{file}: job {job!r} field {_path(rest) or '(job)'!r}: {error['msg']}"
    return f"{file}: field {_path(loc)!r}: {error['msg']}"


def _path(parts: list[str]) -> str:
    """``['mapping', 'name', 'transforms', '0', 'op']`` -> ``mapping.name.transforms[0].op``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out
