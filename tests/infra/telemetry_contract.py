"""The telemetry contract between the app and infra/: the OpenTelemetry instruments the app records, which the
alert rules (infra/modules/alerts.bicep) and the workbook (infra/workbooks/dvbridge-operations.json) query.

The Azure Monitor exporter sends each metric to Application Insights' ``customMetrics``: ``name`` is the
instrument's name, ``customDimensions`` its attributes; a counter's point is the sum over one export interval
(``valueSum``, ``valueCount`` 1), a histogram's its sum, count, min and max (``valueSum``, ``valueCount``,
``valueMin``, ``valueMax``), a gauge's its last value (``value``). docs/infra.md, "Alerts and the workbook", is
the same list for people (a test compares the two).

:func:`query_problems` reads a KQL query the way the offline checks can, by its literals: every string literal
that starts with ``dvbridge.`` or that ``name`` is compared with must be an instrument below; every
``customDimensions.<key>`` an attribute of an instrument the query names; and a literal compared with a column
named like an attribute of fixed values (``outcome == 'dead_lettered'``) one of those values. The queries keep to
that convention: an attribute is extended as a column of its own name before it is compared.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from shared.telemetry import CONTRACT, InstrumentSpec

PREFIX = "dvbridge."


# The app's own registry (shared/telemetry.py) is the contract: one table for what the app records and what
# infra/ may query.
Instrument = InstrumentSpec
INSTRUMENTS: dict[str, Instrument] = {spec.name: spec for spec in CONTRACT}

STRING = r"(?:\"([^\"]*)\"|'([^']*)')"  # a KQL string literal, either quote
LITERAL = re.compile(STRING)
NAME_COMPARED = re.compile(r"\bname\s*(?:==|=~)\s*" + STRING)
NAME_IN = re.compile(r"\bname\s+in~?\s*\(([^)]*)\)")
DIMENSION = re.compile(r"customDimensions(?:\.(\w+)|\[\s*" + STRING + r"\s*\])")
COMPARED = re.compile(r"\b(\w+)\)?\s*(?:==|!=|=~|!~)\s*" + STRING)
COMPARED_IN = re.compile(r"\b(\w+)\)?\s+!?in~?\s*\(([^)]*)\)")


def literal(match: re.Match[str], first: int = 1) -> str:
    return match.group(first) if match.group(first) is not None else match.group(first + 1)


def literals(text: str) -> list[str]:
    return [literal(match) for match in LITERAL.finditer(text)]


def instruments_named(query: str) -> list[str]:
    """Every instrument name a query mentions (in the order written), known or not."""
    names = [name for name in literals(query) if name.startswith(PREFIX)]
    names += [literal(match) for match in NAME_COMPARED.finditer(query)]
    for match in NAME_IN.finditer(query):
        names += literals(match.group(1))
    return list(dict.fromkeys(names))


def query_problems(query: str, *, instruments: Mapping[str, Instrument] = INSTRUMENTS) -> list[str]:
    """What in a KQL query names no instrument, attribute or value of the contract: [] when nothing does."""
    problems = []
    named = instruments_named(query)
    known = [instruments[name] for name in named if name in instruments]
    for name in named:
        if name not in instruments:
            problems.append(f"names '{name}', which is no instrument of the contract{suggestion(name, instruments)}")
    if "customMetrics" in query and not named:
        problems.append("reads customMetrics without naming an instrument")
    attributes: dict[str, frozenset[str] | None] = {}  # of the instruments named: their values together
    for instrument in known:
        for attribute, allowed in instrument.attributes.items():
            if attribute not in attributes:
                attributes[attribute] = allowed
            else:
                before = attributes[attribute]
                attributes[attribute] = None if before is None or allowed is None else before | allowed
    for match in DIMENSION.finditer(query):
        key = match.group(1) or literal(match, 2)
        if known and key not in attributes:
            where = ", ".join(instrument.name for instrument in known)
            problems.append(f"reads customDimensions.{key}, which {where} do not record{suggestion(key, attributes)}")
    compared = [(match.group(1), [literal(match, 2)]) for match in COMPARED.finditer(query)]
    compared += [(match.group(1), literals(match.group(2))) for match in COMPARED_IN.finditer(query)]
    for column, found in compared:
        allowed = attributes.get(column)
        for value in found:
            if allowed is not None and value not in allowed:
                problems.append(
                    f"compares {column} with '{value}', not a value of the attribute {column}:"
                    f" {', '.join(sorted(allowed))}"
                )
    return problems


def suggestion(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""
