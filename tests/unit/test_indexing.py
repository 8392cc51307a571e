"""Acceptance 6: indexing function_app.py imports none of the heavy SDKs, and the worker's rules hold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.devstack_process import ROOT

pytestmark = pytest.mark.unit

HEAVY = ["msal", "azure.identity", "azure.keyvault", "requests", "jwt", "cryptography", "pydantic", "yaml"]

INDEX = textwrap.dedent(
    f"""
    import importlib, json, sys
    import azure.functions as func
    module = importlib.import_module("function_app")  # what the worker does with function_app.py
    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    functions = apps[0].get_functions()
    loaded = [m for m in {HEAVY!r} if any(k == m or k.startswith(m + ".") for k in sys.modules)]
    print(json.dumps({{
        "apps": len(apps),
        "loaded": loaded,
        "functions": {{
        f.get_function_name(): [
            f.get_trigger().get_binding_name(),
            getattr(f.get_trigger(), "route", None),
            getattr(getattr(f.get_trigger(), "auth_level", None), "value", None),
        ]
        for f in functions
    }},
    }}))
    """
)


def test_indexing_stays_light() -> None:
    # As packaged: the build validates the jobs and routes files and stamps them (make, azd prepackage).
    subprocess.run([sys.executable, "-m", "shared.stamps"], cwd=ROOT, check=True, capture_output=True)
    completed = subprocess.run(
        [sys.executable, "-c", INDEX], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout)
    assert out["apps"] == 1
    assert out["loaded"] == []
    assert out["functions"]["health_doctor"] == ["httpTrigger", "health/doctor", "function"]
    # Only the liveness probe may be anonymous.
    anonymous = [name for name, (_, _, level) in out["functions"].items() if level == "anonymous"]
    assert anonymous == ["health_live"]
    # One timer per inbound job of the shipped sync_jobs.yaml, plus the sync HTTP routes.
    assert out["functions"]["sync_accounts"][0] == "timerTrigger"
    assert out["functions"]["sync_run_now"] == ["httpTrigger", "sync/{job}/run", "function"]
