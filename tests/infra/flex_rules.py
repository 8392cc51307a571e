"""Flex Consumption rules the SDK models do not know, checked on infra/ evaluated with its default parameters.

The model of ``functionAppConfig`` accepts any int as ``maximumInstanceCount`` and any string as a runtime
version; Flex Consumption does not (docs/infra.md lists the rules and where they come from):

- ``scaleAndConcurrency.maximumInstanceCount`` is at least 40 (the lowest Flex accepts in most regions) and at
  most 1000; a parameter it comes from has ``@minValue`` of at least 40, so no deployment can go lower;
- ``scaleAndConcurrency.instanceMemoryMB`` is 512, 2048 or 4096, and so is every ``@allowed`` value of the
  parameter it comes from;
- ``functionAppConfig.runtime`` is Python 3.13;
- none of the app settings Flex rejects is the name of any ``{name, value}`` of any file, whichever branch of a
  ternary or variable it sits in (a name may be a literal, or a variable or parameter default holding one);
  ``siteConfig`` carries none of the runtime and scale properties that ``functionAppConfig`` replaces.

:func:`flex_findings` returns :class:`tests.infra.schema_walk.Finding` objects, like the schema walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.infra.bicep_eval import Instance, instantiate, render
from tests.infra.bicep_tree import BicepFile, children, infra_files, is_literal_string, is_ref, operator_of, unquote
from tests.infra.schema_walk import Finding, decorator

FLEX_MIN_INSTANCES = 40  # the lowest maximumInstanceCount Flex accepts in most regions
FLEX_MAX_INSTANCES = 1000
FLEX_INSTANCE_MEMORY_MB = frozenset({512, 2048, 4096})
FLEX_RUNTIME = {"name": "python", "version": "3.13"}
# App settings Flex Consumption rejects: functionAppConfig (runtime, deployment storage) replaces them.
FLEX_REJECTED_SETTINGS = frozenset({
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE",
})  # fmt: skip
# siteConfig properties that say which runtime runs the app or how far it scales: on Flex, functionAppConfig's
# runtime and scaleAndConcurrency say that, and the runtime properties are refused.
FLEX_REJECTED_SITE_CONFIG = frozenset({
    "linuxFxVersion", "windowsFxVersion", "pythonVersion", "nodeVersion", "javaVersion", "powerShellVersion",
    "netFrameworkVersion", "phpVersion", "javaContainer", "javaContainerVersion", "use32BitWorkerProcess",
    "functionAppScaleLimit", "minimumElasticInstanceCount", "preWarmedInstanceCount",
})  # fmt: skip
SITES = "Microsoft.Web/sites"
CONFIG_PATH = "properties.functionAppConfig"
SCALE_PATH = f"{CONFIG_PATH}.scaleAndConcurrency"
# main.bicep's params without a default: any plausible values do, the rules do not depend on them.
REQUIRED_PARAMS = {
    "environmentName": "ci",
    "dataverseUrl": "https://contoso.crm4.dynamics.com",
    "dataverseClientId": "00000000-0000-0000-0000-0000000000c1",
}


def flex_findings(root: Path, params: Mapping[str, Any] | None = None) -> list[Finding]:
    """The Flex rules broken by the templates in ``root``, evaluated with main.bicep's defaults (and
    :data:`REQUIRED_PARAMS`, and ``params`` over both)."""
    deployment = instantiate(root, {**REQUIRED_PARAMS, **(params or {})})
    findings: list[Finding] = []
    sites = 0
    for instance in deployment.walk():
        for declaration, body in instance.resources(SITES):
            if not isinstance(body.get("properties", {}).get("functionAppConfig"), Mapping):
                continue  # not a Flex app
            sites += 1
            raw = declaration.body.get("properties", {})
            findings += site_findings(instance, declaration.symbol, body, raw, declaration.line)
    if not sites:
        findings.append(Finding("main.bicep", "-", CONFIG_PATH, "no function app with functionAppConfig is deployed"))
    findings += rejected_setting_findings(infra_files(root))
    return sorted(set(findings))


def site_findings(
    instance: Instance, symbol: str, body: Mapping[str, Any], raw: Mapping[str, Any], line: int
) -> list[Finding]:
    found: list[Finding] = []

    def report(path: str, message: str) -> None:
        found.append(Finding(instance.file.rel, symbol, path, message, line))

    config = body["properties"]["functionAppConfig"]
    scale = config.get("scaleAndConcurrency") or {}
    raw_scale = raw.get("functionAppConfig", {}).get("scaleAndConcurrency", {})
    count = scale.get("maximumInstanceCount")
    if not isinstance(count, int) or not FLEX_MIN_INSTANCES <= count <= FLEX_MAX_INSTANCES:
        report(
            f"{SCALE_PATH}.maximumInstanceCount",
            f"is {render(count)} with the default parameters; Flex Consumption accepts"
            f" {FLEX_MIN_INSTANCES} to {FLEX_MAX_INSTANCES}",
        )
    found += origin_findings(instance, raw_scale.get("maximumInstanceCount"), minimum_broken)
    memory = scale.get("instanceMemoryMB")
    if memory not in FLEX_INSTANCE_MEMORY_MB:
        report(f"{SCALE_PATH}.instanceMemoryMB", f"is {render(memory)}; Flex Consumption offers {allowed_text()}")
    found += origin_findings(instance, raw_scale.get("instanceMemoryMB"), allowed_broken)
    if config.get("runtime") != FLEX_RUNTIME:
        report(f"{CONFIG_PATH}.runtime", f"is {render(config.get('runtime'))}, not {render(FLEX_RUNTIME)}")
    for key in sorted(site_config_keys(instance.file, raw.get("siteConfig")) & FLEX_REJECTED_SITE_CONFIG):
        report(f"properties.siteConfig.{key}", f"'{key}' is refused on Flex Consumption: functionAppConfig replaces it")
    return found


# A parameter's decorators -> what is wrong with them for the value it feeds (None: nothing), and the path.
type DecoratorRule = Callable[[Mapping[str, Any], bool], tuple[str, str] | None]


def minimum_broken(declaration: Mapping[str, Any], outermost: bool) -> tuple[str, str] | None:
    least = decorator(declaration, "min_value")
    if (isinstance(least, int) and least >= FLEX_MIN_INSTANCES) or (least is None and not outermost):
        return None
    lowest = "any value" if least is None else render(least)
    return "@minValue", f"lets maximumInstanceCount go down to {lowest}: give it @minValue({FLEX_MIN_INSTANCES})"


def allowed_broken(declaration: Mapping[str, Any], outermost: bool) -> tuple[str, str] | None:
    allowed = decorator(declaration, "allowed")
    if allowed is None and not outermost:
        return None
    outside = sorted(set(allowed) - FLEX_INSTANCE_MEMORY_MB) if isinstance(allowed, list) else None
    if outside == []:
        return None
    shown = "no @allowed list" if outside is None else f"@allowed values {outside}"
    return "@allowed", f"has {shown} for instanceMemoryMB; Flex Consumption offers {allowed_text()}"


def origin_findings(instance: Instance, node: Any, rule: DecoratorRule) -> list[Finding]:
    """The parameters a scale value comes from, checked by ``rule``: main.bicep's (what a deployment sets) must
    constrain it; a module's on the way may leave that to its caller, but not contradict it."""
    found = []
    for origin, name in param_origins(instance, node):
        broken = rule(origin.file.params[name], origin.parent is None)
        if broken is not None:
            line = origin.file.line_of("parameters", name)
            found.append(Finding(origin.file.rel, f"param {name}", broken[0], broken[1], line))
    return found


def allowed_text() -> str:
    return ", ".join(map(str, sorted(FLEX_INSTANCE_MEMORY_MB)))


def param_origins(instance: Instance, node: Any) -> Iterator[tuple[Instance, str]]:
    """The parameter declarations a value comes from, through module params up to main.bicep: a value that is a
    parameter reference, passed by the caller as a parameter reference, and so on."""
    while is_ref(node) and node in instance.file.params:
        yield instance, str(node)
        if instance.parent is None or instance.declaration is None:
            return
        given = instance.declaration.body.get("params", {})
        node = {unquote(key): value for key, value in given.items()}.get(str(node))
        instance = instance.parent


def site_config_keys(parsed: BicepFile, node: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """The keys a siteConfig object may have, over both branches of a ternary and through variables."""
    if is_ref(node) and node in parsed.variables and node not in seen:
        return site_config_keys(parsed, parsed.variables[node]["value"], seen | {str(node)})
    operator = operator_of(node)
    if operator and operator[0] == "conditional":
        return site_config_keys(parsed, operator[1]["true_value"], seen) | site_config_keys(
            parsed, operator[1]["false_value"], seen
        )
    if isinstance(node, Mapping) and operator is None:
        return {unquote(key) for key in node}
    return set()


def rejected_setting_findings(files: list[BicepFile]) -> list[Finding]:
    """Every ``{name, value}`` object anywhere in the templates, whatever branch or variable it sits in."""
    found = []
    for parsed in files:
        for section, symbol, node, line in declarations(parsed):
            for item in name_value_pairs(node):
                name = literal_text(parsed, item["name"])
                if name in FLEX_REJECTED_SETTINGS:
                    message = f"app setting {name} is refused on Flex Consumption (in {section} {symbol})"
                    found.append(Finding(parsed.rel, symbol, f"appSettings['{name}']", message, line))
    return found


def literal_text(parsed: BicepFile, node: Any) -> str | None:
    """A setting name as written, or the literal a variable or a parameter's default gives it."""
    for _ in range(len(parsed.variables) + 1):  # a chain of variables is at most that long
        if is_literal_string(node):
            return node
        if is_ref(node) and node in parsed.variables:
            node = parsed.variables[node]["value"]
        elif is_ref(node) and node in parsed.params:
            node = parsed.params[node].get("default")
        else:
            return None
    return None


def declarations(parsed: BicepFile) -> Iterator[tuple[str, str, Any, int]]:
    for section, label in (("parameters", "param"), ("variables", "var"), ("outputs", "output")):
        for symbol, declaration in parsed.tree.get(section, {}).items():
            yield label, symbol, declaration, parsed.line_of(section, symbol)
    for symbol, resource in parsed.resources.items():
        yield "resource", symbol, resource.body, resource.line
    for symbol, module in parsed.modules.items():
        yield "module", symbol, module.body, module.line


def name_value_pairs(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping) and {unquote(key) for key in node} == {"name", "value"}:
        yield node
    if isinstance(node, Mapping | list):
        for child in children(node):
            yield from name_value_pairs(child)
