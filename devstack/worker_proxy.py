"""The Python worker process: devstack's stand-in for the proxy worker that ships inside the Functions host.

From Python 3.13 the host starts a thin proxy that speaks FunctionRpc over gRPC and hands each message to
the execution runtime the app pins (``azure-functions-runtime``, from the app's own environment). This is
that proxy for devstack: it connects to the host's gRPC server, sends ``StartStream``, and relays the
runtime's five calls (init, metadata, load, invocation, environment reload). It never imports the app
itself — the runtime does, in this process — and it converts nothing: request and response payloads are
the runtime's own ``TypedData``. Log records become ``RpcLog`` messages carrying the invocation id.

Started by the host as::

    python -m devstack.worker_proxy --host 127.0.0.1 --port P --workerId W --requestId R --grpcMaxMessageLength N

(the 3.13 proxy's ``--functions-*`` spellings are accepted too). ``WorkerTerminate`` and
``InvocationCancel`` are ignored, as by the real worker: the host kills the process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GRPC_MAX_MESSAGE_BYTES = 2_147_483_647
CONSOLE_PREFIX = "LanguageWorkerConsoleLog"  # what the host recognises on stdout before the stream is up
LOG_LEVELS = {  # logging level -> RpcLog.Level (ILogger's scale)
    logging.CRITICAL: 5,
    logging.ERROR: 4,
    logging.WARNING: 3,
    logging.INFO: 2,
    logging.DEBUG: 1,
}
SYSTEM_LOGGERS = ("azure.functions", "azure_functions_runtime", "devstack.worker_proxy")


@dataclass
class RuntimeRequest:
    """What the runtime's calls take: the message, and the protos module it builds its answers with."""

    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.worker_proxy")
    parser.add_argument("--host", "--functions-uri", dest="host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workerId", "--functions-worker-id", dest="worker_id", required=True)
    parser.add_argument("--requestId", "--functions-request-id", dest="request_id", required=True)
    parser.add_argument(
        "--grpcMaxMessageLength",
        "--functions-grpc-max-message-length",
        dest="grpc_max_message_length",
        type=int,
        default=DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    )
    args = parser.parse_args(argv)
    if "://" in args.host:  # --functions-uri http://127.0.0.1:P/
        from urllib.parse import urlsplit

        parts = urlsplit(args.host)
        args.host, args.port = parts.hostname or "127.0.0.1", parts.port or args.port
    return args


class RpcLogHandler(logging.Handler):
    """Every log record of the worker process, as an ``RpcLog`` on the stream (from any thread)."""

    def __init__(self, send: Any, protos: Any, invocation_id: Any) -> None:
        super().__init__(logging.DEBUG)
        debug = os.environ.get("PYTHON_ENABLE_DEBUG_LOGGING") == "1"
        self.system_level = logging.DEBUG if debug else logging.WARNING
        self._send = send
        self._protos = protos
        self._invocation_id = invocation_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            protos = self._protos
            exception = None
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                exception = protos.RpcException(
                    message=f"{type(error).__name__}: {error}",
                    stack_trace="".join(traceback.format_exception(*record.exc_info)),
                )
            system = record.name.startswith(SYSTEM_LOGGERS)
            if system and record.levelno < self.system_level:
                return  # the host keeps the runtime's own records only from Warning up
            level = max((v for k, v in LOG_LEVELS.items() if record.levelno >= k), default=0)
            log = protos.RpcLog(
                invocation_id=self._invocation_id.get() or "",
                category=record.name,
                level=level,
                message=record.getMessage(),
                exception=exception,
                log_category=protos.RpcLog.System if system else protos.RpcLog.User,
            )
            self._send(protos.StreamingMessage(rpc_log=log))
        except Exception:  # a log line must never take the worker down
            self.handleError(record)


class Dispatcher:
    """One gRPC stream to the host; each request handled in its own task, answered on the same stream."""

    def __init__(self, args: argparse.Namespace) -> None:
        import azure_functions_runtime

        from devstack.rpc import function_rpc_pb2 as protos

        self.runtime = azure_functions_runtime  # the app's pinned runtime, from the app's environment
        self.args = args
        self.protos = protos
        self.loop = asyncio.get_running_loop()
        self.outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, message: Any) -> None:
        """Thread-safe: log records arrive from the runtime's thread pool."""
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, message)

    async def _requests(self) -> Any:
        yield self.protos.StreamingMessage(
            request_id=self.args.request_id, start_stream=self.protos.StartStream(worker_id=self.args.worker_id)
        )
        while True:
            message = await self.outgoing.get()
            if message is None:
                return
            yield message

    async def run(self) -> int:
        import grpc
        import grpc.aio

        from devstack.rpc import function_rpc_pb2_grpc

        size = self.args.grpc_max_message_length
        options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        async with grpc.aio.insecure_channel(f"{self.args.host}:{self.args.port}", options=options) as channel:
            stub = function_rpc_pb2_grpc.FunctionRpcStub(channel)
            call = stub.EventStream(self._requests())
            try:
                async for message in call:
                    task = asyncio.create_task(self.handle(message))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            except grpc.aio.AioRpcError as exc:
                print(f"{CONSOLE_PREFIX} the host closed the stream: {exc.code().name}", flush=True)
                return 1
        print(f"{CONSOLE_PREFIX} the host ended the stream", flush=True)
        return 0

    async def handle(self, message: Any) -> None:
        runtime = self.runtime
        kind = message.WhichOneof("content")
        request = RuntimeRequest(message, {"protos": self.protos, "host": self.args.host})
        protos = self.protos
        try:
            if kind == "worker_init_request":
                directory = message.worker_init_request.function_app_directory
                if directory:
                    os.chdir(directory)
                    if directory not in sys.path:
                        sys.path.insert(0, directory)
                runtime.start_threadpool_executor()
                reply = protos.StreamingMessage(worker_init_response=await runtime.worker_init_request(request))
            elif kind == "functions_metadata_request":
                answer = await runtime.functions_metadata_request(request)
                reply = protos.StreamingMessage(function_metadata_response=answer)
            elif kind == "function_load_request":
                reply = protos.StreamingMessage(function_load_response=await runtime.function_load_request(request))
            elif kind == "invocation_request":
                runtime.invocation_id_cv.set(message.invocation_request.invocation_id)  # this task's context only
                reply = protos.StreamingMessage(invocation_response=await runtime.invocation_request(request))
            elif kind == "function_environment_reload_request":
                answer = await runtime.function_environment_reload_request(request)
                reply = protos.StreamingMessage(function_environment_reload_response=answer)
            elif kind == "worker_status_request":
                reply = protos.StreamingMessage(worker_status_response=protos.WorkerStatusResponse())
            else:  # worker_terminate, invocation_cancel: the real worker ignores them too
                return
        except Exception as exc:  # the runtime answers failures itself; this is the proxy failing
            logging.getLogger("devstack.worker_proxy").exception("handling %s failed", kind)
            failure = protos.StatusResult(
                status=protos.StatusResult.Failure,
                exception=protos.RpcException(message=f"{type(exc).__name__}: {exc}"),
            )
            if kind == "invocation_request":
                invocation_id = message.invocation_request.invocation_id
                reply = protos.StreamingMessage(
                    invocation_response=protos.InvocationResponse(invocation_id=invocation_id, result=failure)
                )
            else:
                return
        reply.request_id = message.request_id
        self.outgoing.put_nowait(reply)


async def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    dispatcher = Dispatcher(args)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if os.environ.get("PYTHON_ENABLE_DEBUG_LOGGING") == "1" else logging.INFO)
    root.addHandler(RpcLogHandler(dispatcher.send, dispatcher.protos, dispatcher.runtime.invocation_id_cv))
    return await dispatcher.run()


def main(argv: list[str] | None = None) -> None:
    print(f"{CONSOLE_PREFIX} devstack worker proxy starting (pid {os.getpid()})", flush=True)
    code = asyncio.run(_main(sys.argv[1:] if argv is None else argv))
    # Without its host the worker has no one to answer: invocations still running in the runtime's thread
    # pool are abandoned, not waited for (a normal exit would join those threads).
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
