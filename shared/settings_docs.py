"""docs/settings.md and DEPLOY.md's table of optional settings, generated from the settings registry.

``python -m shared.settings_docs`` prints docs/settings.md; ``--write`` rewrites it and the generated table in
DEPLOY.md; ``--check`` exits 1 when either differs from the registry (tests/unit/test_settings_registry.py
does the same check, so an edit to the registry must be followed by ``--write``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.settings_registry import KIND_TITLES, SETTINGS, Deploy, Kind, Need, ReadBy, Setting

APP_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_DOC = APP_ROOT / "docs" / "settings.md"
DEPLOY_DOC = APP_ROOT / "DEPLOY.md"
WRITE_COMMAND = "python -m shared.settings_docs --write"
DEPLOY_BEGIN = f"<!-- generated from shared/settings_registry.py by `{WRITE_COMMAND}`: do not edit by hand -->"
DEPLOY_END = "<!-- end of generated table -->"

INTRO = f"""# Settings

<!-- Generated from shared/settings_registry.py by `{WRITE_COMMAND}`: do not edit by hand.
     tests/unit/test_settings_registry.py fails when this file and the registry differ. -->

Every app setting dvbridge reads, and those the Functions host reads on its behalf, declared once in
`shared/settings_registry.py`. dvbridge reads them through `shared.config` only: an empty setting counts as
unset, and every malformed or out-of-range value is reported together in one `ConfigError` that names the
setting and what it accepts (a value that may hold a secret is described by its length, never shown). The
identity and Dataverse settings are read when first needed, so the doctor (`GET /api/health/doctor`) can
report them; the expiry settings and the jobs and routes files are checked when the app starts.

Columns: **required** — whether the app needs it set; **read by** — dvbridge, or the Functions host (which
resolves binding placeholders such as `%EXPIRY_SWEEP_SCHEDULE%` in its own process, so no code default can
stand in for it); **in Azure** — how a deployment of `infra/main.bicep` gets it. DEPLOY.md lists those the
template does not always set.
"""


def _code(text: str) -> str:
    return f"`{text}`"


def default_text(item: Setting) -> str:
    """The default in words: the value (in backticks) and its note, or what unset means."""
    if item.default:
        return _code(item.default) + (f" ({item.default_note})" if item.default_note else "")
    return item.default_note or "unset"


def value_text(item: Setting) -> str:
    """The type and what it accepts: a range, a list of choices."""
    text = str(item.type)
    if item.choices:
        text += ": " + " or ".join(_code(c) for c in item.choices)
    elif item.minimum is not None:
        text = item.accepted if item.accepted.startswith(text) else f"{text}, {item.accepted}"
    return text + ("; may hold a secret (never shown)" if item.secret else "")


def azure_text(item: Setting) -> str:
    if item.deploy is Deploy.TEMPLATE_WHEN:
        return f"main.bicep, when {item.deploy_note}"
    return {Deploy.TEMPLATE: "main.bicep", Deploy.OPTIONAL: "optional", Deploy.LOCAL: "local only"}[item.deploy]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def settings_markdown() -> str:
    """The whole of docs/settings.md."""
    parts = [INTRO]
    for kind in Kind:
        members = [s for s in SETTINGS if s.kind is kind]
        parts.append(f"## {KIND_TITLES[kind]}\n")
        parts.append(_row(["setting", "value", "default", "required", "read by", "in Azure", "description"]))
        parts.append("|---|---|---|---|---|---|---|")
        for item in members:
            required = {Need.REQUIRED: "yes", Need.OPTIONAL: "no"}.get(item.need, str(item.need))
            cells = [_code(item.name), value_text(item), default_text(item), required, str(item.read_by)]
            parts.append(_row([*cells, azure_text(item), item.description]))
        parts.append("")
    return "\n".join(parts)


def deploy_rows() -> list[Setting]:
    """What DEPLOY.md's table lists: settings dvbridge reads that main.bicep does not always set."""
    return [s for s in SETTINGS if s.deploy in (Deploy.OPTIONAL, Deploy.TEMPLATE_WHEN) and s.read_by is not ReadBy.HOST]


def deploy_table() -> str:
    """DEPLOY.md's generated block, markers included."""
    lines = [DEPLOY_BEGIN, _row(["setting", "default", "accepted"]), "|---|---|---|"]
    for item in deploy_rows():
        default = default_text(item)
        if item.deploy is Deploy.TEMPLATE_WHEN:
            default += f"; main.bicep sets it when {item.deploy_note}"
        accepted = " or ".join(_code(c) for c in item.choices) if item.choices else item.accepted
        lines.append(_row([_code(item.name), default, accepted]))
    return "\n".join([*lines, DEPLOY_END])


def with_deploy_table(text: str) -> str:
    """DEPLOY.md's text with its generated block replaced by the registry's; ValueError without the markers."""
    begin, end = text.find(DEPLOY_BEGIN), text.find(DEPLOY_END)
    if begin < 0 or end < begin:
        raise ValueError(f"DEPLOY.md has no generated settings table ({DEPLOY_BEGIN!r} ... {DEPLOY_END!r})")
    return text[:begin] + deploy_table() + text[end + len(DEPLOY_END) :]


def drifted(settings_doc: Path = SETTINGS_DOC, deploy_doc: Path = DEPLOY_DOC) -> list[str]:
    """The files that differ from what the registry generates (missing counts as differing)."""
    stale = []
    if not settings_doc.exists() or settings_doc.read_text(encoding="utf-8") != settings_markdown():
        stale.append(str(settings_doc))
    deploy_text = deploy_doc.read_text(encoding="utf-8")
    if with_deploy_table(deploy_text) != deploy_text:
        stale.append(str(deploy_doc))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.settings_docs", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite docs/settings.md and DEPLOY.md's table")
    action.add_argument("--check", action="store_true", help="exit 1 when either differs from the registry")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for path in stale:
            print(f"{path} differs from shared/settings_registry.py: run `{WRITE_COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    if args.write:
        SETTINGS_DOC.write_text(settings_markdown(), encoding="utf-8")
        DEPLOY_DOC.write_text(with_deploy_table(DEPLOY_DOC.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    sys.stdout.write(settings_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
