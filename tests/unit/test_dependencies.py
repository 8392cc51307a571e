"""Runtime dependencies are pinned: what Azure installs is exactly what the suite ran with."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def requirement_lines() -> list[str]:
    return [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines() if line.split("#")[0].strip()]


def test_every_runtime_requirement_is_pinned_to_the_installed_version() -> None:
    lines = requirement_lines()
    assert len(lines) >= 25  # the direct dependencies and what they pull in
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", line)
        assert match, f"requirements.txt: {line!r} is not pinned with =="
        assert version(match.group(1)) == match.group(2), f"{line} but {version(match.group(1))} is installed"
