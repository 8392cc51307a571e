"""The doctor over HTTP (GET /api/health/doctor) and `python -m devstack run` (what `make run` does)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import azure.functions as func
import pytest

from tests.devstack_process import ROOT, subprocess_env

pytestmark = pytest.mark.integration

logger = logging.getLogger("tests.health")


def _call_doctor_function() -> func.HttpResponse:
    from shared.health.functions import health_doctor

    handler = health_doctor.build().get_user_function()
    request = func.HttpRequest("GET", "http://localhost:7071/api/health/doctor", headers={}, params={}, body=b"")
    response: func.HttpResponse = handler(request)
    return response


def test_http_doctor_reports_a_healthy_chain(devstack, app_env) -> None:
    app_env(devstack)
    response = _call_doctor_function()
    body = json.loads(response.get_body())
    logger.info("doctor json: %s", body)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert body["ok"] is True
    assert [s["name"] for s in body["steps"]] == [
        "settings",
        "managed identity",
        "key vault",
        "credential",
        "credential expiry",
        "entra token",
        "token claims",
        "whoami",
        "privileges",
        "rotation readiness",
    ]
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["whoami"]["details"]["UserId"] == "9b1d3f5a-2c4e-4a6b-8d0f-3e5a7c9b1d01"
    assert steps["privileges"]["details"]["checked"] == [
        f"{t}:{k}" for t in ("accounts", "contacts", "dvb_shipments") for k in ("read", "write")
    ]
    assert steps["rotation readiness"]["status"] == "ok"
    claims = steps["token claims"]["details"]
    assert claims["aud"] == devstack.env["DATAVERSE_URL"]
    assert claims["appid"] == devstack.env["DATAVERSE_CLIENT_ID"]


def test_http_doctor_names_the_failing_step_with_503(faults_devstack, app_env) -> None:
    app_env(faults_devstack, DATAVERSE_CLIENT_SECRET_NAME="wrong-secret")
    response = _call_doctor_function()
    body = json.loads(response.get_body())
    assert response.status_code == 503
    failed = [s for s in body["steps"] if s["status"] == "fail"]
    assert [(s["name"], s["code"]) for s in failed] == [("entra token", "AADSTS7000215")]
    assert body["steps"][-1]["status"] == "skip"


def test_devstack_run_starts_the_world_and_passes_the_doctor(tmp_path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            "run",
            "--once",
            "--dir",
            str(tmp_path / "run"),
            "--host-port",
            "0",
            "--seed-accounts",
            "200",
            "--time-scale",
            "0.05",
        ],
        cwd=ROOT,
        env=subprocess_env({}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    logger.info("devstack run output:\n%s\n%s", completed.stdout, completed.stderr)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("devstack ready")
    assert "all steps passed" in completed.stdout
    assert "5/5 passed" in completed.stdout  # the first runs, through the local host too
    # The sync's account writes came back through the emulator's service endpoint, receiver and processor.
    round_trip = re.search(
        r"(\d+) account writes -> (\d+) deliveries acknowledged \(202\) -> (\d+) events", completed.stdout
    )
    assert round_trip is not None, completed.stdout
    assert len(set(round_trip.groups())) == 1, round_trip[0]
    assert int(round_trip[1]) > 0, round_trip[0]
    assert "devstack stopped" in completed.stdout
    assert not (tmp_path / "run" / "env").exists()  # a stopped devstack leaves no stale environment
