"""No comment or docstring in the repository's Python cites a document the repository does not hold.

Design notes and research references live outside the repository, so a reader of the code cannot follow a
citation of them: the research files under reference/, the design document, a numbered section of either.
A comment says the fact in its own words or points to a page in docs/. The scan reads comments with
``tokenize`` and docstrings with ``ast``, so code and ordinary strings are not scanned; a planted file shows
that every kind of citation is reported.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = ("node_modules", ".devstack", ".git", "__pycache__")

# (pattern, what the citation is). A section sign followed by a number counts too: no document in the
# repository numbers its sections, so such a citation always points somewhere a reader cannot go.
CITATIONS = [
    (re.compile(r"\breference/[\w./-]*\.md\b"), "cites reference/*.md"),
    (re.compile(r"\bDESIGN(?:\.md\b|\s*§)"), "cites DESIGN"),
    (re.compile(r"§\s*\d"), "cites a numbered section (§)"),
]
MD_NAME = re.compile(r"(?<![\w./-])[\w./-]*\w\.md\b")
URL = re.compile(r"\bhttps?://\S+")


def repository_files(root: Path, pattern: str) -> Iterator[Path]:
    """Files matching ``pattern`` under ``root``, outside virtual environments, node_modules and devstack's state."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".venv") and d not in SKIPPED_DIRS)
        yield from (Path(directory) / name for name in sorted(fnmatch.filter(files, pattern)))


def comments_and_docstrings(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) for every comment and every line of every module, class and function docstring."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            for offset, line in enumerate(first.value.value.splitlines()):
                yield first.lineno + offset, line


def _markdown_in_repo(name: str, path: Path, root: Path, names: set[str]) -> bool:
    """Whether ``name`` (as a comment in ``path`` writes it) is a Markdown file inside ``root``."""
    for base in (root, path.parent):
        candidate = (base / name).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            return True
    return "/" not in name and name in names  # a bare file name, e.g. BENCHMARKS.md or local-host.md


def citation_problems(root: Path) -> list[str]:
    """``file:line: what`` for each comment or docstring line that cites a document outside ``root``."""
    names = {path.name for path in repository_files(root, "*.md")}
    problems = []
    for path in repository_files(root, "*.py"):
        where = path.relative_to(root).as_posix()
        for line, text in sorted(comments_and_docstrings(path.read_text(encoding="utf-8"))):
            text = URL.sub("", text)  # a link a reader can follow is no hidden citation
            found = [what for pattern, what in CITATIONS if pattern.search(text)]
            found += [
                f"names {name}, which the repository does not have"
                for name in MD_NAME.findall(text)
                if not _markdown_in_repo(name, path, root, names)
            ]
            if found:
                problems.append(f"{where}:{line}: {'; '.join(found)}: {text.strip()}")
    return problems


def test_no_comment_or_docstring_cites_a_document_outside_the_repository() -> None:
    problems = citation_problems(ROOT)
    assert problems == [], "say the fact in the comment, or point to docs/*.md:\n" + "\n".join(problems)


PLANTED = '''\
"""A planted module (reference/dataverse-web-api.md §5).

Follows DESIGN §6 closely.
"""

LIMIT = 52  # the concurrent-request limit (DESIGN.md)
TEXT = "DESIGN §5 in a string is not a comment"


def f() -> None:
    """Shapes as in ../shared/reference/functions-runtime.md."""
    # the batch layout of §3.4
    # formula of dataverse-throughput.md, section 3
    # fine: docs/local-host.md, BENCHMARKS.md and https://example.com/project/blob/main/NOTES.md


class C:
    """Fine: the host's message flow (docs/local-host.md)."""
'''


def test_the_scan_reports_every_kind_of_citation_in_a_planted_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "local-host.md").write_text("# The local host\n")
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "planted.py").write_text(PLANTED)
    for skipped in (".venv", ".venv-bench", "node_modules", ".devstack"):
        (tmp_path / skipped / "lib").mkdir(parents=True)
        (tmp_path / skipped / "lib" / "vendored.py").write_text("# see DESIGN §1 and reference/x.md\n")

    problems = citation_problems(tmp_path)

    assert problems == [
        "pkg/planted.py:1: cites reference/*.md; cites a numbered section (§); names reference/dataverse-web-api.md,"
        " which the repository does not have: A planted module (reference/dataverse-web-api.md §5).",
        "pkg/planted.py:3: cites DESIGN; cites a numbered section (§): Follows DESIGN §6 closely.",
        "pkg/planted.py:6: cites DESIGN; names DESIGN.md, which the repository does not have:"
        " # the concurrent-request limit (DESIGN.md)",
        "pkg/planted.py:11: cites reference/*.md; names ../shared/reference/functions-runtime.md, which the"
        " repository does not have: Shapes as in ../shared/reference/functions-runtime.md.",
        "pkg/planted.py:12: cites a numbered section (§): # the batch layout of §3.4",
        "pkg/planted.py:13: names dataverse-throughput.md, which the repository does not have:"
        " # formula of dataverse-throughput.md, section 3",
    ]
