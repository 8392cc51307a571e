"""Planted mistakes for the infra checks: a copy of ``infra/`` with exact edits, so each check is seen to fail."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tests.devstack_process import ROOT

INFRA = ROOT / "infra"


def planted_copy(tmp_path: Path, file: str, edits: Iterable[tuple[str, str]]) -> Path:
    """``infra/`` copied under ``tmp_path`` with each ``old -> new`` edit made in ``file``; every ``old`` must
    occur exactly once, so a plant whose text has changed fails loudly instead of planting nothing."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    target = copy / file
    text = target.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{file} no longer holds {old!r} exactly once: update the plant"
        text = text.replace(old, new)
    target.write_text(text)
    return copy
