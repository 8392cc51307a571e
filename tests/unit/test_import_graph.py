"""The allowed directions of imports inside the app (every import, at any depth, TYPE_CHECKING included):

- ``shared/`` never imports ``devstack`` or ``tests``: the emulators stay out of the app's process;
- a capability (``shared.sync``, ``shared.webhooks``, ``shared.expiry``, ``shared.health``) never imports
  another capability;
- the clients (``shared.dataverse``, ``shared.storage``, ``shared.identity``, ``shared.mapping``,
  ``shared.graph``) import neither a capability nor the composition root, which builds them;
- the foundation (settings, errors, logging, input checks, the outgoing-HTTP layer) imports none of those;
- a door (``shared/<capability>/functions.py``) is imported only by ``function_app.py``.

A second test plants each kind of wrong import in a copy and sees it reported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = {"shared.sync", "shared.webhooks", "shared.expiry", "shared.health"}
CLIENTS = {"shared.dataverse", "shared.storage", "shared.identity", "shared.mapping", "shared.graph"}
ROOT_MODULE = "shared.composition"
FOUNDATION = {"shared", "shared.errors", "shared.settings_registry", "shared.config", "shared.logging",
              "shared.http_input", "shared.failure_answers", "shared.outgoing_http",
              "shared.settings_docs", "shared.telemetry"}  # fmt: skip
# The build-time stamp tool validates the jobs and routes files of two capabilities (python -m shared.stamps):
# it may read their file modules, and nothing else of theirs.
STAMP_TOOL = "shared.stamps"
STAMPED_FILES = {"shared.sync.jobs_file", "shared.webhooks.routes_file"}
ENTRY = "function_app"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int


def unit(module: str) -> str:
    """``shared.sync.engine`` -> ``shared.sync``; ``shared.errors`` stays; ``devstack.x`` -> ``devstack``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "shared" and len(parts) > 1 else parts[0]


def edges(root: Path) -> list[Edge]:
    found = []
    files = [*sorted((root / "shared").rglob("*.py")), root / "function_app.py"]
    for path in files:
        if not path.exists():
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if (name.split(".")[0] in ("shared", "devstack", "tests") and (root / _file(name)).exists()) or (
                    name.split(".")[0] in ("devstack", "tests")
                ):
                    found.append(Edge(module, name, node.lineno))
    return found


def _file(module: str) -> str:
    parts = module.split(".")
    return "/".join(parts) + ".py" if len(parts) > 1 else parts[0]


def is_door(module: str) -> bool:
    return unit(module) in CAPABILITIES and module.endswith(".functions")


def violations(root: Path) -> list[str]:
    problems = []
    for edge in edges(root):
        source, target = unit(edge.source), unit(edge.target)
        where = f"{edge.source} (line {edge.line}) imports {edge.target}"
        if edge.source.startswith("shared") and target in ("devstack", "tests"):
            problems.append(f"{where}: the app never imports the emulators or the tests")
        elif is_door(edge.target) and edge.source != ENTRY:
            problems.append(f"{where}: a door is imported only by {ENTRY}.py")
        elif source == target or edge.source == ENTRY:
            continue
        elif source in CAPABILITIES and target in CAPABILITIES:
            problems.append(f"{where}: capabilities do not import each other")
        elif source in CLIENTS and (target in CAPABILITIES or target == ROOT_MODULE):
            problems.append(f"{where}: a client imports neither a capability nor the composition root")
        elif source in FOUNDATION and (target in CAPABILITIES | CLIENTS or target == ROOT_MODULE):
            problems.append(f"{where}: the foundation imports no client, capability or root")
        elif source == STAMP_TOOL and target in CAPABILITIES and edge.target not in STAMPED_FILES:
            problems.append(f"{where}: the stamp tool reads only the capabilities' file modules")
    return problems


def test_the_app_imports_only_in_the_allowed_directions() -> None:
    assert violations(ROOT) == []


def test_the_check_reports_each_kind_of_wrong_import(tmp_path: Path) -> None:
    def plant(path: str, text: str) -> None:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    for package in ("sync", "webhooks", "expiry", "dataverse", "storage"):
        plant(f"shared/{package}/__init__.py", "")
    plant("shared/__init__.py", "")
    plant("shared/composition.py", "")
    plant("shared/errors.py", "from shared.storage.account import X\n")  # foundation -> client
    plant("shared/storage/account.py", "from shared.composition import worker\n")  # client -> root
    plant("shared/dataverse/client.py", "import devstack.dataverse\n")  # app -> emulator
    plant("shared/sync/functions.py", "")
    plant("shared/sync/engine.py", "from shared.webhooks.processor import process\n")  # capability -> capability
    plant("shared/webhooks/processor.py", "from shared.sync.functions import sync_context\n")  # door import
    plant("shared/expiry/monitor.py", "from shared.storage.account import X\nfrom shared.errors import E\n")  # fine
    plant("function_app.py", "from shared.sync.functions import bp\n")  # fine
    reported = violations(tmp_path)
    assert len(reported) == 5, reported
    for expected in ("shared.errors (line 1) imports shared.storage.account: the foundation",
                     "shared.storage.account (line 1) imports shared.composition: a client",
                     "shared.dataverse.client (line 1) imports devstack.dataverse: the app never",
                     "shared.sync.engine (line 1) imports shared.webhooks.processor: capabilities",
                     "shared.webhooks.processor (line 1) imports shared.sync.functions: a door"):  # fmt: skip
        assert any(problem.startswith(expected) for problem in reported), (expected, reported)
