"""Contract tests for the alert rules (infra/modules/alerts.bicep) and the operations workbook (infra/modules/
monitoring.bicep with infra/workbooks/dvbridge-operations.json), on the templates evaluated with main.bicep's
parameters (tests/infra/bicep_eval.py).

Every incident of :data:`INCIDENTS` has its rule: stateful (autoMitigate, so an alert resolves once healthy),
enabled, with its own system-assigned identity, scoped to Application Insights, of the severity and direction given,
with a query that names only instruments, attributes and values of the telemetry contract
(tests/infra/telemetry_contract.py), split by a column the query produces, its threshold from a main.bicep parameter
(or 0 where any occurrence is the incident), and notifying the action group when there is one. The workbook is
deployed from its JSON, which is a workbook (``Notebook/1.0`` with items) whose queries keep to the same contract and
hold the charts an operator opens first. :func:`alert_problems` and :func:`workbook_problems` say what is wrong;
each planted mistake below is seen to be named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.devstack_process import ROOT
from tests.infra.bicep_eval import Instance, Unknown, instantiate, render
from tests.infra.bicep_tree import function_of, is_ref, unquote
from tests.infra.flex_rules import REQUIRED_PARAMS
from tests.infra.planting import planted_copy
from tests.infra.telemetry_contract import INSTRUMENTS, instruments_named, query_problems

pytestmark = pytest.mark.infra

INFRA = ROOT / "infra"
ALERTS_MODULE = "modules/alerts.bicep"
MONITORING_MODULE = "modules/monitoring.bicep"
WORKBOOK_JSON = "workbooks/dvbridge-operations.json"
ALERT_RULES = "Microsoft.Insights/scheduledQueryRules"
ACTION_GROUPS = "Microsoft.Insights/actionGroups"
WORKBOOKS = "Microsoft.Insights/workbooks"
EMAIL = {"alertEmail": "ops@example.com"}
LOAD_TEXT_CONTENT_LIMIT = 131_072  # characters Bicep's loadTextContent() reads at most
STATEFUL_FREQUENCY_LIMIT = timedelta(hours=12)  # stateful (autoMitigate) log search alerts run at most this rarely
WINDOW_LIMIT = timedelta(days=2)  # a log search alert's query looks back at most this far
SEVERITIES = range(5)  # 0 critical ... 4 verbose


@dataclass(frozen=True)
class Incident:
    """What one alert rule must be: the resource in alerts.bicep, what its query reads, how it fires."""

    rule: str
    table: str  # the table the query starts from
    instruments: frozenset[str]  # every one of them named in the query
    severity: int
    operator: str
    threshold: str | int  # the main.bicep parameter it comes from, or 0: any occurrence is the incident
    dimension: str | None  # the column the alerts are split by (one alert per value)
    shows: tuple[str, ...] = ()  # text the query must hold: what makes it this incident


def names(*instruments: str) -> frozenset[str]:
    return frozenset(instruments)


INCIDENTS = {incident.rule: incident for incident in (
    Incident("syncRunFailed", "customMetrics", names("dvbridge.sync.run.duration"), 1, "GreaterThan", 0, "job",
             ('status == "failed"', "sum(valueCount) by job")),
    Incident("functionFailed", "requests", names(), 2, "GreaterThan", 0, "functionName", ("success == false",)),
    Incident("deadLetters", "customMetrics", names("dvbridge.sync.records", "dvbridge.webhook.events"), 2,
             "GreaterThan", "alertDeadLettersPer15Min", "subject", ('outcome == "dead_lettered"',)),
    Incident("throttled", "customMetrics", names("dvbridge.dataverse.requests"), 2, "GreaterThan",
             "alertThrottledPer15Min", "throttle_code", ('throttle_code != "none"',)),
    Incident("webhookLag", "customMetrics", names("dvbridge.webhook.lag"), 2, "GreaterThan", "alertWebhookLagSeconds",
             "route", ("max(valueMax)",)),
    Incident("credentialExpiring", "customMetrics", names("dvbridge.credential.days_left"), 2, "LessThan",
             "alertCredentialDaysLeft", "credential", ("arg_max(timestamp, value) by credential",)),
    Incident("poisonMessages", "customMetrics", names("dvbridge.queue.backlog"), 1, "GreaterThan", 0, "queue",
             ('queue endswith "-poison"', "arg_max(timestamp, value) by queue")),
    Incident("credentialExpiryAlert", "traces", names(), 1, "GreaterThan", 0, None, ("credential_expiry_alert",)),
)}  # fmt: skip

# The charts an operator opens first: a title for the message, and what identifies the workbook item.
CHARTS = {
    "records per job over time": ("dvbridge.sync.records", "timechart", ("by job, bin(timestamp",)),
    "dead letters": ("dvbridge.sync.records", "timechart", ("outcome == 'dead_lettered'", "dvbridge.webhook.events")),
    "Dataverse 429s": ("dvbridge.dataverse.requests", "timechart", ("throttle_code != 'none'",)),
    "webhook lag": ("dvbridge.webhook.lag", "timechart", ("by route",)),
    "credential days left": ("dvbridge.credential.days_left", "table", ("arg_max(timestamp, value",)),
}
WORKBOOK_ITEM_TYPES = {1: "text", 3: "query", 9: "parameters", 10: "metric", 11: "links", 12: "group"}
DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?")


def duration(text: Any) -> timedelta | None:
    match = DURATION.fullmatch(text) if isinstance(text, str) and text != "P" else None
    if match is None:
        return None
    days, hours, minutes = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def module_instance(deployment: Instance, rel: str) -> Instance:
    found = [instance for instance in deployment.walk() if instance.file.rel == rel]
    assert len(found) == 1, f"main.bicep deploys {rel} {len(found)} times"
    return found[0]


def raw_condition(instance: Instance, symbol: str) -> Mapping[str, Any]:
    """A rule's condition as written (parameters and variables not yet followed)."""
    body = instance.file.resources[symbol].body
    criteria = {unquote(key): value for key, value in body["properties"].items()}["criteria"]
    return dict(criteria["allOf"][0])


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


# -- alert rules -------------------------------------------------------------------------------------------------
def alert_problems(root: Path, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with the alert rules of the templates in ``root`` for main.bicep's ``params``."""
    deployment = instantiate(root, {**REQUIRED_PARAMS, **params})
    alerts = module_instance(deployment, ALERTS_MODULE)
    by_symbol = {declaration.symbol: body for declaration, body in alerts.resources(ALERT_RULES)}
    problems = [f"no rule for the incident {name}" for name in INCIDENTS if name not in by_symbol]
    problems += [f"rule {name} is no incident of the contract tests" for name in by_symbol if name not in INCIDENTS]
    groups = [body for _, body in alerts.resources(ACTION_GROUPS)]
    email = params.get("alertEmail")
    if email:
        receivers = [receiver["emailAddress"] for group in groups for receiver in group["properties"]["emailReceivers"]]
        if receivers != [email]:
            problems.append(f"the action group e-mails {receivers}, not [{email!r}]")
    elif groups:
        problems.append("an action group is deployed without alertEmail")
    notified = [Unknown("actionGroup.id")] if email else []
    for name, body in by_symbol.items():
        if name in INCIDENTS:
            problems += [
                f"rule {name}: {problem}" for problem in rule_problems(deployment, alerts, name, body, notified)
            ]
    return problems


def rule_problems(
    deployment: Instance, alerts: Instance, name: str, body: Mapping[str, Any], notified: list[Any]
) -> Iterator[str]:
    incident = INCIDENTS[name]
    props = body["properties"]
    if props.get("autoMitigate") is not True:
        yield "autoMitigate is not true: its alerts would not resolve when healthy"
    if props.get("enabled") is not True:
        yield "is not enabled"
    if body.get("kind") != "LogAlert":
        yield f"kind is {body.get('kind')!r}, not 'LogAlert'"
    if body.get("identity") != {"type": "SystemAssigned"}:
        yield f"identity is {body.get('identity')}, not its own system-assigned one"
    if props.get("scopes") != [Unknown("appInsights.id")]:
        yield f"scopes are {[render(scope) for scope in props.get('scopes') or []]}, not [appInsights.id]"
    if props.get("severity") != incident.severity or props.get("severity") not in SEVERITIES:
        yield f"severity is {props.get('severity')!r}, not {incident.severity}"
    frequency, window = duration(props.get("evaluationFrequency")), duration(props.get("windowSize"))
    if frequency is None or window is None:
        shown = f"evaluationFrequency {props.get('evaluationFrequency')!r}, windowSize {props.get('windowSize')!r}"
        yield f"{shown}: not both ISO 8601 durations"
    elif not (timedelta(minutes=1) <= frequency <= STATEFUL_FREQUENCY_LIMIT and frequency <= window <= WINDOW_LIMIT):
        shown = f"{props['evaluationFrequency']} over {props['windowSize']}"
        yield f"evaluates every {shown}: stateful rules run every PT1M to PT12H, over P2D at most"
    actions = (props.get("actions") or {}).get("actionGroups")
    if actions != notified:
        yield f"notifies {[render(item) for item in actions or []]}, not {[render(item) for item in notified]}"
    conditions = props["criteria"]["allOf"]
    if len(conditions) != 1:
        yield f"has {len(conditions)} conditions, not 1"
        return
    condition = conditions[0]
    query = condition["query"]
    if not isinstance(query, str):
        yield f"its query is {render(query)}, not a string the tests can read"
        return
    yield from (f"query {problem}" for problem in query_problems(query))
    named = set(instruments_named(query))
    if not incident.instruments <= named:
        yield f"query does not name {sorted(incident.instruments - named)}"
    table = query.split(None, 1)[0] if query.split() else ""
    if table != incident.table:
        yield f"query reads {table!r}, not {incident.table!r}"
    for text in incident.shows:
        if text not in query:
            yield f"query lacks {text!r}"
    dimensions = condition.get("dimensions") or []
    split = [dimension["name"] for dimension in dimensions]
    if split != ([incident.dimension] if incident.dimension else []):
        yield f"is split by {split}, not by {incident.dimension}"
    for dimension in dimensions:
        if dimension["name"] not in words(query):
            yield f"dimension {dimension['name']} is no column of its query"
        if dimension.get("operator") != "Include" or dimension.get("values") != ["*"]:
            yield f"dimension {dimension['name']} does not include every value (Include, ['*'])"
    measure = condition.get("metricMeasureColumn")
    if measure is not None and measure not in words(query):
        yield f"measure column {measure} is no column of its query"
    if condition.get("operator") != incident.operator:
        yield f"operator is {condition.get('operator')!r}, not {incident.operator!r}"
    yield from threshold_problems(deployment, alerts, name, incident)


def threshold_problems(deployment: Instance, alerts: Instance, name: str, incident: Incident) -> Iterator[str]:
    written = raw_condition(alerts, name).get("threshold")
    if incident.threshold == 0:
        if written != 0 or isinstance(written, bool):
            yield f"threshold is {written!r}: any occurrence is this incident, so 0"
        return
    if not (is_ref(written) and written in alerts.file.params):
        yield f"threshold {written!r} is not a parameter of {ALERTS_MODULE} (main.bicep's {incident.threshold})"
        return
    assert alerts.declaration is not None  # a module, deployed by main.bicep
    given = alerts.declaration.body.get("params") or {}
    passed = {unquote(key): value for key, value in given.items()}.get(written)
    if not (is_ref(passed) and passed == incident.threshold and passed in deployment.file.params):
        yield f"main.bicep gives its {written} {passed!r}, not its parameter {incident.threshold}"
        return
    declaration = deployment.file.params[str(passed)]
    if declaration.get("default") is None or not any(
        item.get("type") == "min_value" for item in declaration.get("decorators", [])
    ):
        yield f"main.bicep's {passed} has no default or no @minValue"


@pytest.mark.parametrize("params", [{}, EMAIL], ids=["no e-mail", "e-mail"])
def test_every_incident_has_a_stateful_rule_over_the_contract(params: dict[str, str]) -> None:
    assert alert_problems(INFRA, params) == []


def test_the_rules_are_deployed_without_an_email_and_notify_nobody() -> None:
    # The documented choice (docs/infra.md): incidents open and resolve in Azure Monitor > Alerts either way.
    alerts = module_instance(instantiate(INFRA, REQUIRED_PARAMS), ALERTS_MODULE)
    assert list(alerts.resources(ACTION_GROUPS)) == []
    rules = list(alerts.resources(ALERT_RULES))
    assert len(rules) == len(INCIDENTS)
    assert all(body["properties"]["actions"]["actionGroups"] == [] for _, body in rules)


def test_thresholds_default_to_main_bicep_parameters() -> None:
    alerts = module_instance(instantiate(INFRA, REQUIRED_PARAMS), ALERTS_MODULE)
    thresholds = {d.symbol: body["properties"]["criteria"]["allOf"][0]["threshold"]
                  for d, body in alerts.resources(ALERT_RULES)}  # fmt: skip
    assert thresholds == {
        "syncRunFailed": 0, "functionFailed": 0, "deadLetters": 10, "throttled": 20, "webhookLag": 300,
        "credentialExpiring": 14, "poisonMessages": 0, "credentialExpiryAlert": 0,
    }  # fmt: skip
    given = {"alertDeadLettersPer15Min": 3, "alertCredentialDaysLeft": 30}
    alerts = module_instance(instantiate(INFRA, {**REQUIRED_PARAMS, **given}), ALERTS_MODULE)
    thresholds = {d.symbol: body["properties"]["criteria"]["allOf"][0]["threshold"]
                  for d, body in alerts.resources(ALERT_RULES)}  # fmt: skip
    assert (thresholds["deadLetters"], thresholds["credentialExpiring"]) == (3, 30)


# -- the workbook ----------------------------------------------------------------------------------------------------
def workbook_items(items: list[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, dict):
            yield item
            yield from workbook_items(item.get("content", {}).get("items", []))  # a group's own items


def load_text_content_paths(node: Any) -> Iterator[str]:
    function = function_of(node)
    if function and function[0] == "load_text_content":
        yield str(function[1]["file_path"])
    children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else []
    for child in children:
        yield from load_text_content_paths(child)


def workbook_problems(root: Path) -> list[str]:
    """What is wrong with the workbook of the templates in ``root``, and with its JSON."""
    monitoring = module_instance(instantiate(root, REQUIRED_PARAMS), MONITORING_MODULE)
    workbooks = list(monitoring.resources(WORKBOOKS))
    if len(workbooks) != 1:
        return [f"{MONITORING_MODULE} deploys {len(workbooks)} workbooks, not 1"]
    declaration, body = workbooks[0]
    problems = []
    props = body.get("properties", {})
    expected = {"kind": (body.get("kind"), "shared"), "category": (props.get("category"), "workbook"),
                "version": (props.get("version"), "Notebook/1.0"),
                "sourceId": (props.get("sourceId"), Unknown("appInsights.id"))}  # fmt: skip
    for key, (value, wanted) in expected.items():
        if value != wanted:
            problems.append(f"workbook {key} is {render(value)}, not {render(wanted)}")
    if not render(body.get("name")).startswith("guid("):
        problems.append(f"workbook name is {render(body.get('name'))}: ARM names a workbook with a GUID")
    paths = list(load_text_content_paths(dict(declaration.body)))
    loaded = [(monitoring.file.path.parent / path).resolve() for path in paths]
    if loaded != [(root / WORKBOOK_JSON).resolve()]:
        return [*problems, f"the workbook's serializedData loads {paths}, not ['../{WORKBOOK_JSON}']"]
    text = (root / WORKBOOK_JSON).read_text()
    if len(text) > LOAD_TEXT_CONTENT_LIMIT:
        problems.append(f"{WORKBOOK_JSON} has {len(text)} characters; loadTextContent reads {LOAD_TEXT_CONTENT_LIMIT}")
    if "/subscriptions/" in text:
        problems.append(f"{WORKBOOK_JSON} names a resource id: main.bicep gives it fallbackResourceIds")
    try:
        workbook = json.loads(text)
    except json.JSONDecodeError as error:
        return [*problems, f"{WORKBOOK_JSON} is not JSON: {error}"]
    return problems + json_problems(workbook)


def json_problems(workbook: Any) -> list[str]:
    if not isinstance(workbook, dict) or workbook.get("version") != "Notebook/1.0":
        return [f"{WORKBOOK_JSON} is no workbook: its version is not 'Notebook/1.0'"]
    if not isinstance(workbook.get("items"), list) or not workbook["items"]:
        return [f"{WORKBOOK_JSON} has no items"]
    problems = []
    items = list(workbook_items(workbook["items"]))
    parameters = {parameter.get("name") for item in items if item.get("type") == 9
                  for parameter in item["content"].get("parameters", [])}  # fmt: skip
    queries: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        name = item.get("name") or f"item {index}"
        if item.get("type") not in WORKBOOK_ITEM_TYPES:
            problems.append(f"workbook item {name} is of type {item.get('type')!r}, which workbooks do not know")
            continue
        if item["type"] != 3:
            continue
        content = item.get("content", {})
        queries.append((name, content))
        if content.get("version") != "KqlItem/1.0" or not isinstance(content.get("query"), str):
            problems.append(f"workbook item {name} is no KqlItem/1.0 with a query")
            continue
        if content.get("timeContextFromParameter") not in parameters:
            problems.append(f"workbook item {name} takes its time from {content.get('timeContextFromParameter')!r},"
                            " which is no parameter of the workbook")  # fmt: skip
        if content.get("resourceType") != "microsoft.insights/components":
            problems.append(f"workbook item {name} does not query Application Insights")
        problems += [f"workbook item {name}: query {problem}" for problem in query_problems(content["query"])]
    for chart, (instrument, visualization, shows) in CHARTS.items():
        if not any(
            instrument in instruments_named(str(content.get("query")))
            and content.get("visualization") == visualization
            and all(text in str(content.get("query")) for text in shows)
            for _, content in queries
        ):
            problems.append(f"the workbook has no {visualization} of {chart} ({instrument})")
    return problems


def test_the_workbook_is_deployed_from_its_json_and_keeps_to_the_contract() -> None:
    assert workbook_problems(INFRA) == []


def test_every_workbook_query_names_instruments_of_the_contract() -> None:
    workbook = json.loads((INFRA / WORKBOOK_JSON).read_text())
    queries = [item["content"]["query"] for item in workbook_items(workbook["items"]) if item["type"] == 3]
    assert len(queries) >= len(CHARTS)
    named = {name for query in queries for name in instruments_named(query)}
    assert named == set(INSTRUMENTS)  # every instrument is charted, and nothing else is queried


# -- planted mistakes --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plant:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]  # each in one problem, in order; exactly these many problems
    params: tuple[tuple[str, Any], ...] = tuple(EMAIL.items())


ALERT_PLANTS = [
    Plant("an alert query naming a misspelt instrument", ALERTS_MODULE,
          (('"dvbridge.credential.days_left"', '"dvbridge.credential.daysleft"'),),
          ("rule credentialExpiring: query names 'dvbridge.credential.daysleft', which is no instrument of the"
           " contract (did you mean 'dvbridge.credential.days_left'?)",
           "rule credentialExpiring: query does not name ['dvbridge.credential.days_left']")),
    Plant("an alert query reading an attribute the instrument lacks", ALERTS_MODULE,
          (("tostring(customDimensions.throttle_code)", "tostring(customDimensions.throttleCode)"),),
          ("rule throttled: query reads customDimensions.throttleCode, which dvbridge.dataverse.requests do not"
           " record (did you mean 'throttle_code'?)",)),
    Plant("an alert query comparing with a value the attribute never has", ALERTS_MODULE,
          (('| where status == "failed"', '| where status == "failure"'),),
          ("rule syncRunFailed: query compares status with 'failure', not a value of the attribute status",
           "rule syncRunFailed: query lacks 'status == \"failed\"'")),
    Plant("a threshold written into the rule", ALERTS_MODULE,
          (("threshold: webhookLagSeconds", "threshold: 300"),),
          ("rule webhookLag: threshold 300 is not a parameter of modules/alerts.bicep",)),
    Plant("a threshold given a literal by main.bicep", "main.bicep",
          (("    throttledPer15Min: alertThrottledPer15Min\n", "    throttledPer15Min: 20\n"),),
          ("rule throttled: main.bicep gives its throttledPer15Min 20, not its parameter alertThrottledPer15Min",)),
    Plant("a rule that does not resolve when healthy", ALERTS_MODULE,
          (("threshold: credentialDaysLeft\n        }\n      ]\n    }\n    autoMitigate: true",
            "threshold: credentialDaysLeft\n        }\n      ]\n    }\n    autoMitigate: false"),),
          ("rule credentialExpiring: autoMitigate is not true",)),
    Plant("the rules do not notify the action group", ALERTS_MODULE,
          (("    actionGroup.id\n", ""),),
          tuple(f"rule {name}: notifies [], not ['actionGroup.id']" for name in INCIDENTS)),
    Plant("alerts split by a column the query does not produce", ALERTS_MODULE,
          (("              name: 'route'\n", "              name: 'routes'\n"),),
          ("rule webhookLag: is split by ['routes'], not by route",
           "rule webhookLag: dimension routes is no column of its query")),
    Plant("a rule without its identity", ALERTS_MODULE,
          (("  identity: ruleIdentity\n  properties: {\n    displayName: 'dvbridge: a message is in a poison queue'",
            "  properties: {\n    displayName: 'dvbridge: a message is in a poison queue'"),),
          ("rule poisonMessages: identity is None, not its own system-assigned one",)),
    Plant("a stateful rule evaluated once a day", ALERTS_MODULE,
          (("    evaluationFrequency: 'PT1H'\n    windowSize: 'P1D'\n",
            "    evaluationFrequency: 'P1D'\n    windowSize: 'P1D'\n"),),
          ("rule credentialExpiring: evaluates every P1D over P1D: stateful rules run every PT1M to PT12H",)),
]  # fmt: skip
WORKBOOK_PLANTS = [
    Plant("a workbook query naming a misspelt instrument", WORKBOOK_JSON,
          (("'dvbridge.webhook.lag'", "'dvbridge.webhook.lags'"),),
          ("workbook item webhook-lag: query names 'dvbridge.webhook.lags', which is no instrument of the contract"
           " (did you mean 'dvbridge.webhook.lag'?)",
           "the workbook has no timechart of webhook lag (dvbridge.webhook.lag)")),
    Plant("a workbook query comparing with a value the attribute never has", WORKBOOK_JSON,
          (("| where outcome == 'written'", "| where outcome == 'writen'"),),
          ("workbook item records-written-per-job: query compares outcome with 'writen'",)),
    Plant("a workbook query reading an attribute the instrument lacks", WORKBOOK_JSON,
          (("tostring(customDimensions.credential)", "tostring(customDimensions.credentials)"),),
          ("workbook item credential-days-left: query reads customDimensions.credentials, which"
           " dvbridge.credential.days_left do not record (did you mean 'credential'?)",)),
    Plant("a workbook JSON that is not JSON", WORKBOOK_JSON,
          (('"version": "Notebook/1.0",', '"version": "Notebook/1.0"'),),
          (f"{WORKBOOK_JSON} is not JSON",)),
    Plant("a workbook of another schema version", WORKBOOK_JSON,
          (('"version": "Notebook/1.0",', '"version": "Notebook/2.0",'),),
          (f"{WORKBOOK_JSON} is no workbook: its version is not 'Notebook/1.0'",)),
    Plant("the workbook loads another file", MONITORING_MODULE,
          (("loadTextContent('../workbooks/dvbridge-operations.json')", "loadTextContent('../workbooks/ops.json')"),),
          ("the workbook's serializedData loads ['../workbooks/ops.json']",)),
    Plant("a workbook that is not shared", MONITORING_MODULE,
          (("  kind: 'shared'\n", ""),),
          ("workbook kind is null, not 'shared'",)),
    Plant("a workbook without the credential chart", WORKBOOK_JSON,
          (('"visualization": "table"\n      },\n      "name": "credential-days-left"',
            '"visualization": "tiles"\n      },\n      "name": "credential-days-left"'),),
          ("the workbook has no table of credential days left (dvbridge.credential.days_left)",)),
]  # fmt: skip


def check_plant(plant: Plant, problems: list[str]) -> None:
    assert len(problems) == len(plant.problems), problems
    for expected, problem in zip(plant.problems, problems, strict=True):
        assert expected in problem, problems


@pytest.mark.parametrize("plant", ALERT_PLANTS, ids=[plant.id for plant in ALERT_PLANTS])
def test_a_planted_alert_mistake_is_named(tmp_path: Path, plant: Plant) -> None:
    check_plant(plant, alert_problems(planted_copy(tmp_path, plant.file, plant.edits), dict(plant.params)))


@pytest.mark.parametrize("plant", WORKBOOK_PLANTS, ids=[plant.id for plant in WORKBOOK_PLANTS])
def test_a_planted_workbook_mistake_is_named(tmp_path: Path, plant: Plant) -> None:
    check_plant(plant, workbook_problems(planted_copy(tmp_path, plant.file, plant.edits)))


def test_the_contract_is_what_docs_infra_md_lists() -> None:
    docs = (ROOT / "docs" / "infra.md").read_text()
    rows = {match.group(1): match.group(0) for match in re.finditer(r"^\| `(dvbridge\.[\w.]+)` \|.*$", docs, re.M)}
    assert set(rows) == set(INSTRUMENTS)
    for name, instrument in INSTRUMENTS.items():
        for attribute, allowed in instrument.attributes.items():
            assert f"`{attribute}`" in rows[name], (name, attribute)
            for value in sorted(allowed or ()):
                assert value in rows[name], (name, attribute, value)
        assert f"| {instrument.kind} | `{instrument.unit}` |" in rows[name], name
    alerts = module_instance(instantiate(INFRA, REQUIRED_PARAMS), ALERTS_MODULE)
    for declaration, body in alerts.resources(ALERT_RULES):
        incident = INCIDENTS[declaration.symbol]
        title = body["properties"]["displayName"]
        row = next((line for line in docs.splitlines() if line.startswith(f"| {title} |")), "")
        assert row, f"docs/infra.md has no row for {title}"
        assert f"| {incident.severity} |" in row, row
        assert (f"`{incident.threshold}`" if incident.threshold else "any") in row, row
