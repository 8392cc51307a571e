"""Every relative link in README.md and docs/*.md names a file that exists, and an anchor that one of its
headings makes (GitHub's rule: lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+).*?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
# Files another change is about to add, linked already: a missing one is not reported; once it exists, links to
# it are checked like any other.
PENDING: frozenset[str] = frozenset()


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts as its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        targets += LINK.findall(CODE_SPAN.sub("", line))
    return targets


def broken_links(path: Path, root: Path = ROOT, pending: frozenset[str] = PENDING) -> list[str]:
    """Each relative link of ``path`` that does not resolve, with the reason."""
    problems = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{path.name}: {target} leaves the repository")
        elif not resolved.exists():
            if resolved.relative_to(root.resolve()).as_posix() not in pending:
                problems.append(f"{path.name}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.name}: {target}: no heading makes #{anchor}")
    return problems


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = [problem for doc in documents() for problem in broken_links(doc)]
    assert problems == []


def test_the_docs_have_links_to_check() -> None:
    assert len(documents()) > 5
    assert len(links(ROOT / "README.md")) > 10


def test_the_checker_finds_planted_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## What it does (today)\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n## A `code` heading: yes\n\n"
        "[fine](docs/other.md) [fine](docs/other.md#what-it-does-today) [fine](docs/other.md#twice-1)\n"
        "[fine](#a-code-heading-yes) [external](https://example.com/nowhere.md) [folder](docs)\n"
        "[missing file](docs/gone.md) [missing anchor](docs/other.md#nope) [missing here](#nothing)\n"
        "[escapes](../../etc/passwd) `[in a code span](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[pending, absent](docs/soon.md) [pending, present](docs/other.md#gone)\n"
    )

    assert broken_links(page, tmp_path, pending=frozenset({"docs/soon.md", "docs/other.md"})) == [
        "README.md: docs/gone.md: no such file",
        "README.md: docs/other.md#nope: no heading makes #nope",
        "README.md: #nothing: no heading makes #nothing",
        "README.md: ../../etc/passwd leaves the repository",
        "README.md: docs/other.md#gone: no heading makes #gone",
    ]
    assert "README.md: docs/soon.md: no such file" in broken_links(page, tmp_path, pending=frozenset())


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Throughput of the first runs", "throughput-of-the-first-runs"),
        ("App settings and `%NAME%`", "app-settings-and-name"),
        ("Where devstack's host differs from Azure's (and what is not confirmed)",
         "where-devstacks-host-differs-from-azures-and-what-is-not-confirmed"),
        ("`make run` and `make demo`", "make-run-and-make-demo"),
        ("Keys in URLs: every value addresses exactly its own record",
         "keys-in-urls-every-value-addresses-exactly-its-own-record"),
    ],
)  # fmt: skip
def test_slugs_follow_githubs_rule(heading: str, expected: str) -> None:
    assert slug(heading) == expected
