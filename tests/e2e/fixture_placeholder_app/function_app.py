"""A fixture app whose timers bind their schedules to app settings: one set by the test, one never set."""

import logging

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.timer_trigger(arg_name="timer", schedule="%FIXTURE_UNSET_SCHEDULE%")
def unset_schedule(timer: func.TimerRequest) -> None:
    logging.info("unset_schedule ran")


@app.timer_trigger(arg_name="timer", schedule="%FIXTURE_SET_SCHEDULE%", run_on_startup=True)
def set_schedule(timer: func.TimerRequest) -> None:
    logging.info("set_schedule ran")


@app.route(route="ping", methods=["GET"])
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")
