"""A fixture app for the local host's e2e tests: every trigger kind, effects written to Azurite queues."""

import json
import os
import sys
import time
from importlib.metadata import version

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
STORAGE = "AzureWebJobsStorage"
CRASH_EXIT_CODE = 70

# Every process that imports this module leaves its pid here: the host process must never be among them.
if os.environ.get("FIXTURE_IMPORT_LOG"):
    with open(os.environ["FIXTURE_IMPORT_LOG"], "a") as imports:
        imports.write(f"{os.getpid()}\n")


@app.route(route="items/{id:int}/{label?}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    body = {"id": req.route_params.get("id"), "label": req.route_params.get("label"), "x": req.params.get("x")}
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"X-Fixture": "yes"})


@app.route(route="public", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def public(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.get_body() or b"hello", status_code=201, mimetype="text/plain", charset="utf-8")


@app.route(route="ops/secret", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("admin ok")


@app.route(route="enqueue", methods=["POST"])
@app.queue_output(arg_name="outq", queue_name="work", connection=STORAGE)
def enqueue(req: func.HttpRequest, outq: func.Out[str]) -> func.HttpResponse:
    outq.set(req.get_body().decode())
    return func.HttpResponse(status_code=202)


@app.queue_trigger(arg_name="msg", queue_name="work", connection=STORAGE)
@app.queue_output(arg_name="done", queue_name="done", connection=STORAGE)
def work(msg: func.QueueMessage, done: func.Out[str]) -> None:
    body = msg.get_body().decode()
    if body == "crash":
        os._exit(CRASH_EXIT_CODE)  # the worker process dies mid-invocation
    if body == "hang":
        time.sleep(6)  # beyond functionTimeout (3 s)
    if body == "fail" or (body == "flaky" and msg.dequeue_count < 3):
        raise RuntimeError(f"cannot process {body!r} (attempt {msg.dequeue_count})")
    done.set(json.dumps({"body": body, "dequeue_count": msg.dequeue_count}))


@app.timer_trigger(arg_name="timer", schedule="*/2 * * * * *")
@app.queue_output(arg_name="ticks", queue_name="ticks", connection=STORAGE)
def every_two_seconds(timer: func.TimerRequest, ticks: func.Out[str]) -> None:
    ticks.set(json.dumps({"past_due": timer.past_due, "next": (timer.schedule_status or {}).get("Next")}))


@app.timer_trigger(arg_name="timer", schedule="0 0 3 * * *", run_on_startup=True)
@app.queue_output(arg_name="nightly", queue_name="nightly", connection=STORAGE)
def nightly(timer: func.TimerRequest, nightly: func.Out[str]) -> None:
    nightly.set(json.dumps({"ran": True, "past_due": timer.past_due}))


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="events", queue_name="events", connection=STORAGE)
def on_event(event: func.EventGridEvent, events: func.Out[str]) -> None:
    events.set(json.dumps({"type": event.event_type, "subject": event.subject, "data": event.get_json()}))


@app.route(route="slow", methods=["GET"])
def slow(req: func.HttpRequest) -> func.HttpResponse:
    time.sleep(6)  # beyond functionTimeout (3 s)
    return func.HttpResponse("too late")


@app.route(route="whereami", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def whereami(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "pid": os.getpid(),
        "runtime_loaded": "azure_functions_runtime" in sys.modules,
        "runtime_version": version("azure-functions-runtime"),
        "python": list(sys.version_info[:2]),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="crash", methods=["POST"])
def crash(req: func.HttpRequest) -> func.HttpResponse:
    os._exit(CRASH_EXIT_CODE)


@app.route(route="echo/{segment}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """What the runtime handed the function, so a test can compare it with what the client sent."""
    body = {
        "segment": req.route_params.get("segment"),
        "params": dict(req.params),
        "header": req.headers.get("x-echo"),
        "body": req.get_body().hex(),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json")
