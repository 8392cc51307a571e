"""The settings registry: every setting declared once, read through typed readers that report every problem
together, the generated docs in step with it, and no setting read anywhere else by a literal name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.config import Settings, SettingsReader, read_float, read_int, read_text
from shared.errors import ConfigError
from shared.expiry.settings import ExpirySettings
from shared.settings_docs import (
    DEPLOY_BEGIN,
    DEPLOY_DOC,
    DEPLOY_END,
    deploy_rows,
    drifted,
    settings_markdown,
    with_deploy_table,
)
from shared.settings_registry import (
    REGISTRY,
    SETTINGS,
    SYNC_SCHEDULE_PREFIX,
    Deploy,
    EnvVars,
    Kind,
    ReadBy,
    Type,
    setting,
)
from tests.devstack_process import ROOT

pytestmark = pytest.mark.unit

GOOD_IDENTITY = {
    "DATAVERSE_URL": "https://contoso.crm4.dynamics.com",
    "DATAVERSE_TENANT_ID": "5f0c3a2e-7d1b-4c8e-9a61-2b7e4d9f1c01",
    "DATAVERSE_CLIENT_ID": "3b9d7c1e-5a2f-4e8b-b6d4-8c1f0a7e2d11",
    "DATAVERSE_CLIENT_SECRET_NAME": "dataverse-client-secret",
    "KEY_VAULT_URL": "https://contoso-dvbridge.vault.azure.net",
}
# The modules allowed to touch os.environ (config) and to spell setting names (the registry).
REGISTRY_MODULES = {"shared/config.py", "shared/settings_registry.py"}
ENVIRONMENT_ACCESS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def named(problems: tuple[str, ...]) -> list[str]:
    """The setting each problem starts with."""
    return [p.split("=")[0].split(" ")[0] for p in problems]


# -- the registry itself --------------------------------------------------------------------------------------
def test_every_name_is_declared_once_and_envvars_spells_exactly_the_registry() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    spelled = {v for k, v in vars(EnvVars).items() if k.isupper() and isinstance(v, str)}
    assert spelled == set(REGISTRY)


def test_every_declaration_is_complete() -> None:
    assert {s.kind for s in SETTINGS} == set(Kind)
    for item in SETTINGS:
        assert item.description.endswith("."), item.name
        if item.type in (Type.INT, Type.NUMBER, Type.DAYS):
            assert item.default is not None, item.name
            assert item.minimum is not None, item.name
        if item.deploy is Deploy.TEMPLATE_WHEN:
            assert item.deploy_note, item.name


def test_every_declared_default_reads_back_without_a_problem() -> None:
    reader = SettingsReader({})
    for item in SETTINGS:
        if item.read_by is not ReadBy.HOST and item.default is not None:
            reader.read(item.name)
            explicit = SettingsReader({item.name: item.default})
            assert explicit.read(item.name) == SettingsReader({}).read(item.name), item.name
            assert explicit.problems == [], item.name
    assert reader.problems == []


def test_a_job_schedule_setting_is_the_pattern() -> None:
    assert setting("SYNC_SCHEDULE_ACCOUNTS") is REGISTRY[EnvVars.SYNC_SCHEDULE]
    assert SYNC_SCHEDULE_PREFIX == "SYNC_SCHEDULE_"
    with pytest.raises(KeyError):
        setting("NOT_A_SETTING")
    with pytest.raises(KeyError):
        SettingsReader({}).integer("NOT_A_SETTING")


# -- defaults, exactly as before the registry ----------------------------------------------------------------
def test_defaults_are_the_ones_the_modules_had(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.storage.leases import lease_duration_s, lease_renew_s
    from shared.sync.fanout import chunk_concurrency
    from shared.webhooks.dedupe import Dedupe, dedupe_ttl_s

    env: dict[str, str] = {}
    assert read_int(EnvVars.SYNC_LEASE_DURATION_S, env) == 60
    assert read_int(EnvVars.SYNC_CHUNK_CONCURRENCY, env) == 2
    assert read_int(EnvVars.WEBHOOK_DEDUPE_TTL_S, env) == 86400
    assert read_text(EnvVars.SYNC_JOBS_FILE, env) == "sync_jobs.yaml"
    assert read_text(EnvVars.WEBHOOK_ROUTES_FILE, env) == "webhook_routes.yaml"
    assert read_float(EnvVars.EXPIRY_DRIFT_TOLERANCE_S, env) == 86400.0
    assert ExpirySettings.from_env({}) == ExpirySettings()
    settings = Settings.from_env(GOOD_IDENTITY)
    assert (settings.secret_cache_ttl_s, settings.secret_max_stale_s) == (900, 3600)
    assert (settings.token_refresh_margin_s, settings.http_timeout_s) == (300, 30)
    assert settings.managed_identity_client_id == ""  # as before: unset reads as ""
    assert settings.storage_account_name is None
    assert (lease_renew_s(60), lease_renew_s(15)) == (20, 5)
    # The module readers, over the process environment.
    for name in (EnvVars.SYNC_LEASE_DURATION_S, EnvVars.SYNC_CHUNK_CONCURRENCY, EnvVars.WEBHOOK_DEDUPE_TTL_S):
        monkeypatch.delenv(name, raising=False)
    assert (lease_duration_s(), chunk_concurrency(), dedupe_ttl_s()) == (60, 2, 86400)
    assert Dedupe(object()).ttl_s == 86400
    assert Dedupe(object(), ttl_s=5).ttl_s == 5


def test_module_readers_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.storage.leases import lease_duration_s
    from shared.sync.jobs_file import jobs_file
    from shared.webhooks.dedupe import Dedupe

    monkeypatch.setenv(EnvVars.SYNC_LEASE_DURATION_S, "15")
    monkeypatch.setenv(EnvVars.WEBHOOK_DEDUPE_TTL_S, "600")
    monkeypatch.setenv(EnvVars.SYNC_JOBS_FILE, "/etc/dvbridge/jobs.yaml")
    assert lease_duration_s() == 15
    assert Dedupe(object()).ttl_s == 600
    assert jobs_file() == Path("/etc/dvbridge/jobs.yaml")
    monkeypatch.setenv(EnvVars.SYNC_LEASE_DURATION_S, "90")
    with pytest.raises(ConfigError, match=r"SYNC_LEASE_DURATION_S=90 is out of range: use 15 to 60 seconds"):
        lease_duration_s()


def test_storage_account_name_is_read_into_settings() -> None:
    settings = Settings.from_env({**GOOD_IDENTITY, EnvVars.STORAGE_ACCOUNT_NAME: " stcontoso "})
    assert settings.storage_account_name == "stcontoso"


# -- bad values ------------------------------------------------------------------------------------------------
def test_a_bad_integer_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        read_int(EnvVars.WEBHOOK_DEDUPE_TTL_S, {EnvVars.WEBHOOK_DEDUPE_TTL_S: "one day"})
    (problem,) = caught.value.problems
    assert problem == (
        "WEBHOOK_DEDUPE_TTL_S='one day' is not a whole number of seconds: e.g. WEBHOOK_DEDUPE_TTL_S=86400"
    )


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        (EnvVars.SYNC_LEASE_DURATION_S, "14", "15 to 60 seconds"),
        (EnvVars.SYNC_LEASE_DURATION_S, "61", "15 to 60 seconds"),
        (EnvVars.SYNC_CHUNK_CONCURRENCY, "0", "1 to 52"),
        (EnvVars.SYNC_CHUNK_CONCURRENCY, "53", "1 to 52"),
        (EnvVars.WEBHOOK_DEDUPE_TTL_S, "0", "at least 1 second"),
        (EnvVars.TOKEN_REFRESH_MARGIN_S, "3001", "0 to 3000 seconds"),
        (EnvVars.HTTP_TIMEOUT_S, "0", "at least 1 second"),
        (EnvVars.SECRET_CACHE_TTL_S, "-1", "at least 0 seconds"),
        (EnvVars.EXPIRY_DRIFT_TOLERANCE_S, "-0.5", "at least 0 seconds"),
    ],
)
def test_a_value_out_of_range_names_the_range(name: str, value: str, accepted: str) -> None:
    reader = SettingsReader({name: value})
    assert reader.read(name) == SettingsReader({}).read(name)  # the default stands in
    (problem,) = reader.problems
    assert problem.startswith(f"{name}={value} is out of range: use {accepted}, e.g. {name}=")


@pytest.mark.parametrize("value", ["15", "60", " 30 "])
def test_the_lease_range_is_inclusive(value: str) -> None:
    assert read_int(EnvVars.SYNC_LEASE_DURATION_S, {EnvVars.SYNC_LEASE_DURATION_S: value}) == int(value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "a day"])
def test_a_number_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError, match=r"EXPIRY_DRIFT_TOLERANCE_S=.* is not a number of seconds"):
        read_float(EnvVars.EXPIRY_DRIFT_TOLERANCE_S, {EnvVars.EXPIRY_DRIFT_TOLERANCE_S: value})


@pytest.mark.parametrize("value", ["30,0", "30,x", ",", "-1"])
def test_thresholds_are_positive_whole_days(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ExpirySettings.from_env({EnvVars.EXPIRY_THRESHOLDS_DAYS: value})
    assert named(caught.value.problems) == [EnvVars.EXPIRY_THRESHOLDS_DAYS]
    assert "each at least 1 day" in caught.value.problems[0]


def test_every_problem_is_reported_together() -> None:
    env = {
        EnvVars.SYNC_LEASE_DURATION_S: "sixty",
        EnvVars.SYNC_CHUNK_CONCURRENCY: "0",
        EnvVars.WEBHOOK_DEDUPE_TTL_S: "1.5",
        EnvVars.EXPIRY_THRESHOLDS_DAYS: "30,fourteen",
        EnvVars.EXPIRY_DRIFT_TOLERANCE_S: "nan",
        EnvVars.ENTRA_INSTANCE_DISCOVERY: "maybe",
        EnvVars.GRAPH_URL: "http://graph.microsoft.com",
        EnvVars.EXPIRY_CHANNELS: "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/channels/)",
    }
    reader = SettingsReader(env)
    for name in env:
        reader.read(name)
    with pytest.raises(ConfigError) as caught:
        reader.raise_problems()
    assert named(caught.value.problems) == list(env)
    # The expiry settings alone, as the blueprint reads them at start-up: its problems together too.
    with pytest.raises(ConfigError) as expiry:
        ExpirySettings.from_env(env)
    assert named(expiry.value.problems) == [
        EnvVars.EXPIRY_THRESHOLDS_DAYS,
        EnvVars.EXPIRY_DRIFT_TOLERANCE_S,
        EnvVars.EXPIRY_CHANNELS,
    ]


def test_expiry_settings_do_not_stop_on_a_broken_identity_setting() -> None:
    # Borrowed as defaults only: Settings.from_env and the doctor report these, indexing must not stop here.
    env = {EnvVars.DATAVERSE_CLIENT_ID: "@Microsoft.KeyVault(SecretUri=x)", EnvVars.KEY_VAULT_URL: "not a url"}
    expiry = ExpirySettings.from_env(env)
    assert expiry.app_ids == ("@Microsoft.KeyVault(SecretUri=x)",)
    assert expiry.vault_name == "not a url"


def test_a_secret_value_is_described_by_its_shape_never_shown() -> None:
    secret_ish = [s.name for s in SETTINGS if s.secret]
    assert EnvVars.STORAGE in secret_ish
    value = "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=c2VjcmV0LWtleS12YWx1ZQ=="
    for name in secret_ish:
        assert SettingsReader({}).shown(name, value) == f"{name} (a value of {len(value)} characters)"
    assert SettingsReader({}).shown(EnvVars.HTTP_TIMEOUT_S, "ten") == "HTTP_TIMEOUT_S='ten'"


def test_the_doctor_reads_the_sweeps_drift_tolerance_with_the_other_settings() -> None:
    from shared.identity.doctor import run_doctor

    report = run_doctor({**GOOD_IDENTITY, EnvVars.DATAVERSE_URL: "", EnvVars.EXPIRY_DRIFT_TOLERANCE_S: "a day"})
    step = report.steps[0]
    assert (step.name, step.status, step.code) == ("settings", "fail", "ConfigError")
    assert step.summary == "2 problem(s)"
    assert "DATAVERSE_URL is missing" in (step.cause or "")
    assert "EXPIRY_DRIFT_TOLERANCE_S='a day' is not a number of seconds" in (step.cause or "")
    assert all(s.status == "skip" for s in report.steps[1:])


# -- generated docs ---------------------------------------------------------------------------------------------
def test_docs_settings_md_and_the_deploy_table_are_generated_from_the_registry() -> None:
    assert drifted() == [], "run `python -m shared.settings_docs --write`"


def test_the_drift_check_can_fail(tmp_path: Path) -> None:
    stale_doc, deploy = tmp_path / "settings.md", tmp_path / "DEPLOY.md"
    stale_doc.write_text(settings_markdown().replace("`60`", "`45`", 1))
    deploy.write_text(DEPLOY_DOC.read_text().replace("| `SYNC_LEASE_DURATION_S` | `60` |", "| `X` | `1` |"))
    assert drifted(stale_doc, deploy) == [str(stale_doc), str(deploy)]
    assert drifted(tmp_path / "missing.md", DEPLOY_DOC) == [str(tmp_path / "missing.md")]
    with pytest.raises(ValueError, match="no generated settings table"):
        with_deploy_table("# DEPLOY\n")


def test_every_setting_appears_in_docs_settings_md_under_its_group() -> None:
    text = settings_markdown()
    for item in SETTINGS:
        assert f"| `{item.name}` |" in text, item.name
    positions = [text.index(f"| `{s.name}` |") for s in sorted(SETTINGS, key=lambda s: list(Kind).index(s.kind))]
    assert positions == sorted(positions)


def test_the_deploy_table_lists_what_main_bicep_leaves_out() -> None:
    block = DEPLOY_DOC.read_text().split(DEPLOY_BEGIN)[1].split(DEPLOY_END)[0]
    listed = [line.split("`")[1] for line in block.splitlines() if line.startswith("| `")]
    assert listed == [s.name for s in deploy_rows()]
    assert EnvVars.SYNC_LEASE_DURATION_S in listed
    assert EnvVars.DATAVERSE_URL not in listed


# -- no literal setting reads outside the registry --------------------------------------------------------------
def literal_setting_reads(source: str, filename: str = "<source>") -> list[str]:
    """Every place ``source`` touches the environment (os.environ, getenv...) or spells a declared setting's
    name as a string of its own: either one is a setting read around the registry."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_ACCESS:
            found.append(f"{filename}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in ENVIRONMENT_ACCESS:
            found.append(f"{filename}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.alias) and node.name in ENVIRONMENT_ACCESS:
            found.append(f"{filename}:{node.lineno}: import {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _a_setting_name(node.value):
            found.append(f"{filename}:{node.lineno}: {node.value!r}")
    return found


def _a_setting_name(text: str) -> bool:
    return text in REGISTRY or text.startswith(SYNC_SCHEDULE_PREFIX)


def app_sources() -> list[Path]:
    return [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "function_app.py"]


def test_no_module_reads_a_setting_around_the_registry() -> None:
    found = []
    for path in app_sources():
        relative = path.relative_to(ROOT).as_posix()
        if relative not in REGISTRY_MODULES:
            found += literal_setting_reads(path.read_text(encoding="utf-8"), relative)
    assert found == [], "read these through shared.config and name them with EnvVars"


@pytest.mark.parametrize(
    "planted",
    [
        'import os\nTTL = int(os.environ.get("WEBHOOK_DEDUPE_TTL_S", "86400"))\n',
        'import os\nTTL = os.getenv("ANYTHING")\n',
        "from os import environ\n",
        "from os import getenv as read\n",
        'NAME = "SYNC_LEASE_DURATION_S"\n',
        'def schedule(job: str) -> str:\n    return "SYNC_SCHEDULE_" + job\n',
        'def read(env: dict[str, str]) -> str:\n    return env.get("EXPIRY_APP_IDS", "")\n',
    ],
)
def test_the_scan_finds_a_planted_read(planted: str) -> None:
    assert literal_setting_reads(planted) != []


def test_the_scan_leaves_names_in_prose_and_envvars_alone() -> None:
    clean = (
        '"""Reads SYNC_LEASE_DURATION_S through the registry."""\n'
        "from shared.config import read_int\n"
        "from shared.settings_registry import EnvVars\n"
        "LEASE = read_int(EnvVars.SYNC_LEASE_DURATION_S)\n"
        'MESSAGE = f"{EnvVars.EXPIRY_CHANNELS}: not kind:secret-name"\n'
    )
    assert literal_setting_reads(clean) == []
    assert "shared/config.py" in {p.relative_to(ROOT).as_posix() for p in app_sources()}
