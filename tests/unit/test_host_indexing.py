"""The local host indexes from the worker's metadata as the Functions host does: ``%NAME%`` from the app
settings or the function is disabled with the host's words, auth levels as the decorators wrote them (upper
case), queue outputs decoded from TypedData."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devstack.host import _http_response, _queue_messages, function_info, load_app_settings, resolve
from devstack.rpc import function_rpc_pb2 as protos

pytestmark = pytest.mark.unit


def metadata(name: str, *bindings: dict[str, Any]) -> Any:
    return protos.RpcFunctionMetadata(
        name=name, function_id=f"id-{name}", raw_bindings=[json.dumps(b) for b in bindings]
    )


def timer(schedule: str, **extra: Any) -> dict[str, Any]:
    return {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": schedule, **extra}


def test_a_placeholder_resolves_from_the_app_settings() -> None:
    info = function_info(metadata("sync", timer("%SCHEDULE%", runOnStartup=True)), {"SCHEDULE": "0 */5 * * * *"})
    assert info.disabled is None
    assert (info.schedule, info.resolved_schedule, info.run_on_startup) == ("%SCHEDULE%", "0 */5 * * * *", True)


def test_an_unset_placeholder_disables_the_function_with_the_hosts_words() -> None:
    info = function_info(metadata("sync", timer("%SYNC_SCHEDULE_X%")), {"OTHER": "1"})
    assert info.disabled == "'%SYNC_SCHEDULE_X%' does not resolve to a value."
    assert info.resolved_schedule is None


def test_a_placeholder_in_a_queue_name_is_resolved_too() -> None:
    trigger = {"direction": "IN", "type": "queueTrigger", "name": "m", "queueName": "%Q%", "connection": "Store"}
    info = function_info(metadata("work", trigger), {"Q": "orders"})
    assert (info.queue_name, info.connection) == ("orders", "Store")
    assert function_info(metadata("work", trigger), {}).disabled == "'%Q%' does not resolve to a value."


def test_a_schedule_that_is_not_six_field_ncrontab_disables_the_function() -> None:
    for bad in ("*/5 * * * *", "every day", "0 0 25 * * *"):
        info = function_info(metadata("t", timer(bad)), {})
        assert info.disabled is not None
        assert "was not recognized as a valid cron expression" in info.disabled


def test_http_auth_levels_routes_and_methods_come_from_the_raw_bindings() -> None:
    anonymous = {"direction": "IN", "type": "httpTrigger", "name": "req", "authLevel": "ANONYMOUS", "route": "a/{x}"}
    out = {"direction": "OUT", "type": "http", "name": "$return"}
    info = function_info(metadata("f", {**anonymous, "methods": ["get"]}, out), {})
    assert (info.auth_level, info.route, info.methods, info.trigger_param) == ("anonymous", "a/{x}", ["GET"], "req")
    bare = function_info(metadata("g", {"direction": "IN", "type": "httpTrigger", "name": "req"}, out), {})
    assert bare.auth_level == "function"
    assert bare.route == "g"
    assert "DELETE" in bare.methods  # no methods declared: every method, as the host does


def test_the_environment_wins_over_local_settings_and_the_example_is_read_on_a_fresh_clone(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json.example").write_text(json.dumps({"Values": {"A": "example", "B": "example"}}))
    settings, source = load_app_settings(tmp_path, {"B": "env"})
    assert (settings, source) == ({"A": "example", "B": "env"}, "local.settings.json.example")
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"A": "local"}}))
    settings, source = load_app_settings(tmp_path, {})
    assert (settings, source) == ({"A": "local"}, "local.settings.json")


def test_resolve_replaces_every_placeholder_in_nested_values() -> None:
    assert resolve({"a": ["%X%-%Y%", 3]}, {"X": "1", "Y": "2"}) == {"a": ["1-2", 3]}
    with pytest.raises(ValueError, match="'%Z%' does not resolve"):
        resolve("%Z%", {})


def test_queue_outputs_become_one_message_per_item() -> None:
    assert _queue_messages(protos.TypedData(string="one")) == ["one"]
    assert _queue_messages(protos.TypedData(bytes=b"raw")) == ["raw"]
    listed = json.dumps(["a", {"id": "1", "body": "b"}, {"k": 1}])
    assert _queue_messages(protos.TypedData(json=listed)) == ["a", "b", '{"k": 1}']
    collection = protos.TypedData(collection_string=protos.CollectionString(string=["x", "y"]))
    assert _queue_messages(collection) == ["x", "y"]


def test_http_responses_take_status_headers_and_body_from_rpc_http() -> None:
    http = protos.RpcHttp(status_code="201", headers={"X-A": "1"}, body=protos.TypedData(bytes=b"made"))
    response = _http_response(protos.TypedData(http=http))
    assert (response.status_code, response.body, response.headers["x-a"]) == (201, b"made", "1")
    assert _http_response(protos.TypedData()).status_code == 204
    assert _http_response(protos.TypedData(string="hi")).body == b"hi"
