"""A stand-in for the Azure CLI (``az``) that the infra scripts call, for tests that run the scripts offline.

It answers the few calls the scripts make from a JSON state file (``AZ_STUB_STATE``) and records every call, as
its argument list, one JSON line each in ``AZ_STUB_LOG``. Writes change the state, so a second run of a script
sees what the first one made; a write Graph would refuse (an app role or owner that is already there) fails as
Graph fails, so a script that is not idempotent is caught. Anything else, including a ``--query`` it does not
know, exits 2: a script that starts making another call makes its tests fail rather than pass unchecked.

State::

    {"service_principals": {"<appId>": "<object id>"},
     "applications": {"<appId>": {"id": "<object id>", "owners": ["<object id>", ...]}},
     "app_role_assignments": {"<principal id>": [{"appRoleId": ..., "resourceId": ...}, ...]},
     "refuse": {"<METHOD> <url>": "<Graph error message>"}}

``az rest`` is answered like ``az``: ``--query`` (only ``value[?a=='x' && b=='y'] | length(@)``) then
``--output tsv`` or ``none``; a Graph error is printed to stderr and exits 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

GRAPH = "https://graph.microsoft.com/v1.0"
ROLE_ASSIGNMENTS = re.compile(re.escape(GRAPH) + r"/servicePrincipals/([^/?]+)/appRoleAssignments")
OWNERS = re.compile(re.escape(GRAPH) + r"/applications/([^/?]+)/owners(\?\$select=id|/\$ref)")
COUNT_QUERY = re.compile(r"value\[\?(.+)\] \| length\(@\)")
CONDITION = re.compile(r"(\w+)=='([^']*)'")
DIRECTORY_OBJECT = re.compile(re.escape(GRAPH) + r"/directoryObjects/([0-9a-fA-F-]+)")


class AzError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def options(args: list[str]) -> dict[str, str]:
    found, index = {}, 0
    while index < len(args):
        if not args[index].startswith("--") or index + 1 >= len(args):
            raise AzError(f"az stub: cannot read the arguments {args}", 2)
        found[args[index][2:]] = args[index + 1]
        index += 2
    return found


def query(result: Any, expression: str | None) -> Any:
    if expression is None:
        return result
    if expression == "id":
        return result["id"]
    matched = COUNT_QUERY.fullmatch(expression)
    if matched is None:
        raise AzError(f"az stub: unsupported --query {expression!r}", 2)
    conditions = []
    for part in matched.group(1).split(" && "):
        condition = CONDITION.fullmatch(part.strip())
        if condition is None:
            raise AzError(f"az stub: unsupported condition {part!r}", 2)
        conditions.append((condition.group(1), condition.group(2)))
    return sum(all(str(item.get(key)) == value for key, value in conditions) for item in result["value"])


def show(result: Any, output: str | None) -> str:
    if output == "none":
        return ""
    if output == "tsv":
        return f"{result}\n"
    return json.dumps(result, indent=2) + "\n"


def json_body(opts: dict[str, str]) -> dict[str, Any]:
    if opts.get("headers") != "Content-Type=application/json":
        raise AzError("az stub: a POST without Content-Type=application/json", 2)
    body: dict[str, Any] = json.loads(opts["body"])
    return body


def rest(state: dict[str, Any], opts: dict[str, str]) -> Any:
    method, url = opts["method"].upper(), opts["url"]
    refused = state.get("refuse", {}).get(f"{method} {url}")
    if refused:
        raise AzError(f"Forbidden({refused})")
    applications = {app["id"]: app for app in state.get("applications", {}).values()}
    if (matched := ROLE_ASSIGNMENTS.fullmatch(url)) is not None:
        held = state.setdefault("app_role_assignments", {}).setdefault(matched.group(1), [])
        if method == "GET":
            return {"value": held}
        if method == "POST":
            body = json_body(opts)
            if body.get("principalId") != matched.group(1):
                raise AzError("Bad Request(principalId does not match the service principal in the URL)")
            if any(a["appRoleId"] == body["appRoleId"] and a["resourceId"] == body["resourceId"] for a in held):
                raise AzError("Bad Request(Permission being assigned already exists on the object)")
            held.append({"appRoleId": body["appRoleId"], "resourceId": body["resourceId"]})
            return body
    if (matched := OWNERS.fullmatch(url)) is not None:
        app = applications.get(matched.group(1))
        if app is None:
            raise AzError(f"Not Found(Resource '{matched.group(1)}' does not exist)")
        owners = app.setdefault("owners", [])
        if method == "GET" and matched.group(2) == "?$select=id":
            return {"value": [{"id": owner} for owner in owners]}
        if method == "POST" and matched.group(2) == "/$ref":
            reference = DIRECTORY_OBJECT.fullmatch(str(json_body(opts).get("@odata.id", "")))
            if reference is None:
                raise AzError("Bad Request(Invalid object identifier)")
            if reference.group(1) in owners:
                raise AzError(
                    "Bad Request(One or more added object references already exist for the following modified"
                    " properties: 'owners'.)"
                )
            owners.append(reference.group(1))
            return None
    raise AzError(f"az stub: unsupported az rest {method} {url}", 2)


def run(state: dict[str, Any], args: list[str]) -> str:
    if args[:3] == ["ad", "sp", "show"]:
        opts = options(args[3:])
        found = state.get("service_principals", {}).get(opts["id"])
        if found is None:
            raise AzError(f"ERROR: Service principal '{opts['id']}' doesn't exist", 3)
        return show(query({"id": found}, opts.get("query")), opts.get("output"))
    if args[:3] == ["ad", "app", "show"]:
        opts = options(args[3:])
        app = state.get("applications", {}).get(opts["id"])
        if app is None:
            raise AzError(f"ERROR: Resource '{opts['id']}' does not exist", 3)
        return show(query(app, opts.get("query")), opts.get("output"))
    if args[:1] == ["rest"]:
        opts = options(args[1:])
        return show(query(rest(state, opts), opts.get("query")), opts.get("output"))
    raise AzError(f"az stub: unsupported command {args}", 2)


def main(args: list[str]) -> int:
    state_file, log = Path(os.environ["AZ_STUB_STATE"]), Path(os.environ["AZ_STUB_LOG"])
    with log.open("a") as calls:
        calls.write(json.dumps(args) + "\n")
    state = json.loads(state_file.read_text())
    try:
        out = run(state, args)
    except AzError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.code
    state_file.write_text(json.dumps(state))
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
