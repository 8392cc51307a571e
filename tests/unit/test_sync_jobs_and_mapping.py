"""Sync job definitions (errors name file, job and field) and the mapping of rows to columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.dataverse.schema import Column, TableSchema
from shared.errors import ConfigError
from shared.mapping.mapper import Mapper, Rejection
from shared.sync.jobs import InboundJob, load_jobs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

ACCOUNT = TableSchema(
    "account",
    {
        "accountnumber": Column("accountnumber", "String", 20),
        "name": Column("name", "String", 160, required=True),
        "telephone1": Column("telephone1", "String", 50),
        "numberofemployees": Column("numberofemployees", "Integer"),
        "revenue": Column("revenue", "Money"),
        "creditonhold": Column("creditonhold", "Boolean"),
        "accountcategorycode": Column(
            "accountcategorycode", "Picklist", options={"preferred customer": 1, "standard": 2}
        ),
        "lastonholdtime": Column("lastonholdtime", "DateTime"),
    },
)
CONTACT = TableSchema(
    "contact",
    {n: Column(n, "String", 100) for n in ("emailaddress1", "firstname", "lastname", "fullname")}
    | {"parentcustomerid": Column("parentcustomerid", "Lookup")},
)


def test_the_shipped_jobs_file_is_valid() -> None:
    jobs = load_jobs(ROOT / "sync_jobs.yaml")
    assert sorted(jobs) == ["accounts", "contacts", "shipments-out"]
    assert jobs["contacts"].mapping["parentcustomerid"].lookup is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("transforms: [{op: trim}], required: true", "job 'accounts' field 'mapping.accountnumber.transforms[0].op'"),
        ("kind: blob_csv, container: erp-import", "job 'accounts' field 'source': Input tag 'blob_xml'"),
        ("key: [accountnumber]", "job 'accounts' field '(job)': Value error, key column(s) ['nope']"),
    ],
)
def test_a_broken_jobs_file_names_file_job_and_field(tmp_path: Path, change: str, expected: str) -> None:
    text = (ROOT / "sync_jobs.yaml").read_text()
    broken = {
        "transforms: [{op: trim}], required: true": text.replace(
            "transforms: [{op: trim}], required: true", "transforms: [{op: upper_case}], required: true", 1
        ),
        "kind: blob_csv, container: erp-import": text.replace(
            "kind: blob_csv, container: erp-import", "kind: blob_xml, container: erp-import", 1
        ),
        "key: [accountnumber]": text.replace("key: [accountnumber]", "key: [nope]", 1),
    }[change]
    path = tmp_path / "sync_jobs.yaml"
    path.write_text(broken)
    with pytest.raises(ConfigError) as caught:
        load_jobs(path)
    assert any(p.startswith(f"{path}: {expected}") for p in caught.value.problems), caught.value.problems


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  a: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_jobs(path)


def mapper(job: str, schema: TableSchema) -> Mapper:
    spec = load_jobs(ROOT / "sync_jobs.yaml")[job]
    assert isinstance(spec, InboundJob)
    return Mapper(spec.mapping, spec.key, schema)


def test_a_good_row_maps_with_every_transform() -> None:
    row = {"CustomerNo": " A-1 ", "Name": " Contoso ", "Phone": "", "Employees": "42", "Revenue": "1.234,50",
           "CreditHold": "yes", "Category": "Standard", "HoldSince": "31.12.2025"}  # fmt: skip
    assert mapper("accounts", ACCOUNT).map(row) == {
        "accountnumber": "A-1",
        "name": "Contoso",
        "telephone1": None,
        "numberofemployees": 42,
        "revenue": 1234.5,
        "creditonhold": True,
        "accountcategorycode": 2,
        "lastonholdtime": "2025-12-31T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"HoldSince": "2025/31/12"}, "BadDate", "lastonholdtime"),
        ({"CustomerNo": "  "}, "MissingKey", "accountnumber"),
        ({"Category": "Gold"}, "UnknownOptionLabel", "accountcategorycode"),
        ({"Name": "x" * 161}, "TooLong", "name"),
        ({"Name": ""}, "MissingRequired", "name"),
        ({"Employees": "many"}, "BadNumber", "numberofemployees"),
    ],
)
def test_bad_rows_are_rejected_with_a_code_and_the_field(change: dict[str, str], code: str, field: str) -> None:
    row = {"CustomerNo": "A-1", "Name": "Contoso", "Category": "Standard", "HoldSince": "2025-01-01", **change}
    result = mapper("accounts", ACCOUNT).map(row)
    assert isinstance(result, Rejection)
    assert (result.code, result.field) == (code, field)
    assert field in result.reason


def test_lookups_bind_by_alternate_key_and_concat_builds_names() -> None:
    result = mapper("contacts", CONTACT).map(
        {"Email": " Jane@Example.COM ", "FirstName": "Jane", "LastName": "O'Hara", "CustomerNo": "O'B-1"}
    )
    assert result == {
        "emailaddress1": "jane@example.com",
        "firstname": "Jane",
        "lastname": "O'Hara",
        "fullname": "Jane O'Hara",
        "parentcustomerid_account@odata.bind": "/accounts(accountnumber='O''B-1')",
    }


def test_schema_from_entity_definitions() -> None:
    entity = {
        "LogicalName": "account",
        "Attributes": [
            {
                "LogicalName": "accountid",
                "AttributeType": "Uniqueidentifier",
                "IsPrimaryId": True,
                "RequiredLevel": {"Value": "SystemRequired"},
            },
            {
                "LogicalName": "name",
                "AttributeType": "String",
                "MaxLength": 160,
                "RequiredLevel": {"Value": "ApplicationRequired"},
            },
            {"LogicalName": "accountcategorycode", "AttributeType": "Picklist", "RequiredLevel": {"Value": "None"}},
        ],
    }
    picklists = [
        {
            "LogicalName": "accountcategorycode",
            "OptionSet": {"Options": [{"Value": 1, "Label": {"UserLocalizedLabel": {"Label": "Preferred Customer"}}}]},
        }
    ]
    schema = TableSchema.from_metadata(entity, picklists)
    assert schema.columns["name"] == Column("name", "String", 160, True)
    assert not schema.columns["accountid"].required
    assert schema.columns["accountcategorycode"].options == {"preferred customer": 1}
