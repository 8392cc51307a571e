"""The host's side of FunctionRpc: a gRPC server, the Python worker process, and the message flow.

What the Functions host does with a language worker (docs/local-host.md, "Message flow"):
start the process with ``--host/--port/--workerId/--requestId/--grpcMaxMessageLength``, wait for its
``StartStream``, send ``WorkerInitRequest``, ``FunctionsMetadataRequest`` and one ``FunctionLoadRequest``
per function, then ``InvocationRequest``s, each answered by an ``InvocationResponse`` (with ``RpcLog``s
before it). The worker ignores ``WorkerTerminate`` and ``InvocationCancel``, so a timeout or a stop kills
the process, and a crash or a kill is followed by a new process that is initialised and indexed again;
invocations in flight at that moment fail.

The host never imports the app: everything it knows about a function comes from the worker's metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.host_telemetry import WORKER_OPEN_TELEMETRY_CAPABILITY
from devstack.rpc import function_rpc_pb2 as protos

HOST_VERSION = "4.1040.0-devstack"  # what WorkerInitRequest reports; the runtime logs it, nothing branches on it
START_STREAM_TIMEOUT_S = 60.0  # the host's default wait for a new worker's StartStream
INIT_TIMEOUT_S = 120.0  # init indexes the app (imports function_app): generous for a cold disk
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # between consecutive failed starts
MAX_CONSECUTIVE_START_FAILURES = 5  # then the host gives up, as Azure stops restarting a crash-looping worker
GRPC_MAX_MESSAGE_BYTES = 2_147_483_647  # the host passes int.MaxValue
CONSOLE_PREFIX = "LanguageWorkerConsoleLog"
HOST_CAPABILITIES = {"RpcHttpBodyOnly": "true", "RawHttpBodyBytes": "true", "TypedDataCollection": "true"}
LEVEL_NAMES = {0: "Trace", 1: "Debug", 2: "Information", 3: "Warning", 4: "Error", 5: "Critical"}
SYSTEM_LOG_MIN_LEVEL = 3  # the runtime's own Information lines (one per invocation) stay out of the log
# The host's app setting for the number of language worker processes: 1 unless set, at most 10.
WORKER_PROCESS_COUNT_SETTING = "FUNCTIONS_WORKER_PROCESS_COUNT"
MAX_WORKER_PROCESSES = 10


class WorkerError(RuntimeError):
    """The worker could not run a request: it crashed, was killed for a timeout, or is not running."""


class IndexingError(WorkerError):
    """The worker's init or metadata answer was a failure: the runtime's own exception message."""


@dataclass
class WorkerProcess:
    worker_id: str
    process: asyncio.subprocess.Process
    stream_ready: asyncio.Future[asyncio.Queue[Any]]
    pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    killed_for: str | None = None  # why the host killed it (a timeout), so in-flight calls say so
    closed: bool = False  # its stream has ended: nothing sent to it will be answered
    capabilities: dict[str, str] = field(default_factory=dict)  # what its WorkerInitResponse reported

    @property
    def open_telemetry(self) -> bool:
        """It said ``WorkerOpenTelemetryEnabled`` (the runtime does with ``PYTHON_ENABLE_OPENTELEMETRY=true``):
        it attaches each invocation's trace context and sends its own telemetry."""
        return self.capabilities.get(WORKER_OPEN_TELEMETRY_CAPABILITY, "").lower() == "true"


class _Servicer:
    def __init__(self, channel: WorkerChannel) -> None:
        self.channel = channel

    async def EventStream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("content") != "start_stream":
            return
        worker = self.channel.workers.get(first.start_stream.worker_id)
        if worker is None or worker.stream_ready.done():
            return
        outgoing: asyncio.Queue[Any] = asyncio.Queue()
        worker.stream_ready.set_result(outgoing)
        reader = asyncio.create_task(self.channel.read_stream(worker, requests))
        try:
            while True:
                message = await outgoing.get()
                if message is None:
                    return
                yield message
        finally:
            reader.cancel()


class WorkerChannel:
    """One worker at a time; ``start()`` brings one up and indexes it, ``invoke()`` runs a function in it."""

    def __init__(
        self,
        app_dir: Path,
        settings: dict[str, str],
        log: Callable[[str], None],
        *,
        python: str | None = None,
        start_stream_timeout_s: float = START_STREAM_TIMEOUT_S,
    ) -> None:
        self.app_dir = app_dir
        self.settings = settings
        self.log = log
        self.python = python or settings.get("languageWorkers__python__defaultExecutablePath") or sys.executable
        self.start_stream_timeout_s = start_stream_timeout_s
        self.workers: dict[str, WorkerProcess] = {}
        self.current: WorkerProcess | None = None
        self.metadata: list[Any] = []
        self.function_ids: dict[str, str] = {}  # name -> the current worker's function id
        self.ready = asyncio.Event()
        self.stopping = False
        self.restarts = 0
        self._server: Any = None
        self._port = 0
        self._monitor: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------
    async def _serve(self) -> None:
        import grpc.aio

        from devstack.rpc import function_rpc_pb2_grpc

        options = [
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ]
        self._server = grpc.aio.server(options=options)
        function_rpc_pb2_grpc.add_FunctionRpcServicer_to_server(_Servicer(self), self._server)
        self._port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def start(self) -> list[Any]:
        """Start a worker, initialise and index it, load every function; return the metadata."""
        if self._server is None:
            await self._serve()
        worker = await self._spawn()
        try:
            await self._initialise(worker)
        except BaseException:
            await self._kill(worker, "start-up failed")
            raise
        self._adopt(worker)
        return self.metadata

    def _adopt(self, worker: WorkerProcess) -> None:
        """An initialised worker becomes the one invocations go to, watched for its exit."""
        self.current = worker
        self.ready.set()
        self._monitor = asyncio.create_task(self._watch(worker))

    async def _spawn(self) -> WorkerProcess:
        worker_id = str(uuid.uuid4())
        request_id = str(uuid.uuid4())
        devstack_root = str(Path(__file__).resolve().parents[1])
        env = {
            **self.settings,
            "AzureWebJobsScriptRoot": str(self.app_dir),
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "PYTHONUNBUFFERED": "1",
            # The proxy (this repo's devstack package) is found after the app's own directory, as the real
            # proxy lives in the host's worker directory, not in the app.
            "PYTHONPATH": os.pathsep.join(p for p in (self.settings.get("PYTHONPATH"), devstack_root) if p),
        }
        process = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "devstack.worker_proxy",
            "--host",
            "127.0.0.1",
            "--port",
            str(self._port),
            "--workerId",
            worker_id,
            "--requestId",
            request_id,
            "--grpcMaxMessageLength",
            str(GRPC_MAX_MESSAGE_BYTES),
            cwd=str(self.app_dir),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the host, which stops the worker itself
        )
        worker = WorkerProcess(worker_id, process, asyncio.get_running_loop().create_future())
        self.workers[worker_id] = worker
        assert process.stdout is not None
        assert process.stderr is not None
        worker.readers = [
            asyncio.create_task(self._console(process.stdout, worker)),
            asyncio.create_task(self._console(process.stderr, worker)),
        ]
        self.log(f"Starting worker process: {self.python} -m devstack.worker_proxy (pid {process.pid})")
        return worker

    async def _initialise(self, worker: WorkerProcess) -> None:
        exited: asyncio.Future[Any] = asyncio.ensure_future(worker.process.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {worker.stream_ready, exited}
            done, _ = await asyncio.wait(
                waiting, timeout=self.start_stream_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if worker.stream_ready not in done:
                reason = (
                    f"exited with code {worker.process.returncode}"
                    if exited in done
                    else f"sent no StartStream within {self.start_stream_timeout_s:g} s"
                )
                raise WorkerError(f"The Python worker process (pid {worker.process.pid}) {reason}")
        finally:
            exited.cancel()
        init = await self._request(
            worker,
            protos.StreamingMessage(
                worker_init_request=protos.WorkerInitRequest(
                    host_version=HOST_VERSION,
                    capabilities=HOST_CAPABILITIES,
                    function_app_directory=str(self.app_dir),
                    worker_directory=str(Path(__file__).resolve().parent),
                )
            ),
            INIT_TIMEOUT_S,
        )
        _raise_on_failure(init.worker_init_response.result, "Worker failed to index functions")
        worker.capabilities = dict(init.worker_init_response.capabilities)
        answer = await self._request(
            worker,
            protos.StreamingMessage(
                functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=str(self.app_dir))
            ),
            INIT_TIMEOUT_S,
        )
        response = answer.function_metadata_response
        _raise_on_failure(response.result, "Worker failed to index functions")
        if response.use_default_metadata_indexing:
            raise IndexingError("the worker asked for host indexing (function.json), which devstack does not do")
        metadata = list(response.function_metadata_results)
        loads = [
            self._request(
                worker,
                protos.StreamingMessage(
                    function_load_request=protos.FunctionLoadRequest(function_id=m.function_id, metadata=m)
                ),
                INIT_TIMEOUT_S,
            )
            for m in metadata
        ]
        for m, loaded in zip(metadata, await asyncio.gather(*loads), strict=True):
            _raise_on_failure(loaded.function_load_response.result, f"Function '{m.name}' failed to load")
        self.metadata = metadata
        self.function_ids = {m.name: m.function_id for m in metadata}

    async def _watch(self, worker: WorkerProcess) -> None:
        """A worker that exits while it is the current one is replaced (after failing what it had in flight)."""
        code = await worker.process.wait()
        await asyncio.gather(*worker.readers, return_exceptions=True)
        self._fail_pending(worker, worker.killed_for or f"the worker process exited with code {code}")
        if self.stopping or self.current is not worker:
            return
        self.log(f"Language Worker Process exited. Pid={worker.process.pid}. Exit code {code}. Restarting the worker.")
        await self.restart()

    async def restart(self) -> None:
        async with self._restart_lock:
            self.ready.clear()
            failures = 0
            while not self.stopping:
                worker = None
                try:
                    worker = await self._spawn()
                    await self._initialise(worker)
                except (WorkerError, OSError) as exc:
                    if worker is not None:
                        await self._kill(worker, "start-up failed")
                    failures += 1
                    self.log(f"Failed to start a language worker process: {exc}")
                    if failures >= MAX_CONSECUTIVE_START_FAILURES:
                        self.log("The worker failed to start repeatedly; invocations will fail until devstack restarts")
                        return
                    await asyncio.sleep(RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S)) - 1])
                    continue
                self.restarts += 1
                self._adopt(worker)
                return

    async def kill_current(self, reason: str) -> None:
        """What the host does when functionTimeout passes: the runtime cannot cancel, so the process goes."""
        worker = self.current
        if worker is not None:
            await self._kill(worker, reason)

    async def _kill(self, worker: WorkerProcess, reason: str) -> None:
        worker.killed_for = reason
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        self._fail_pending(worker, reason)

    async def stop(self) -> None:
        self.stopping = True
        for worker in list(self.workers.values()):
            await self._kill(worker, "the host is stopping")
            await asyncio.gather(*worker.readers, return_exceptions=True)
        if self._monitor:
            self._monitor.cancel()
        if self._server is not None:
            await self._server.stop(grace=1)

    # -- messages -------------------------------------------------------------------------------------
    async def read_stream(self, worker: WorkerProcess, requests: AsyncIterator[Any]) -> None:
        try:
            async for message in requests:
                kind = message.WhichOneof("content")
                if kind == "rpc_log":
                    self._rpc_log(message.rpc_log)
                    continue
                key = message.request_id
                if kind == "invocation_response":
                    key = message.invocation_response.invocation_id
                future = worker.pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(message)
        except Exception:  # noqa: S110 - the stream ends with the process; _watch reports it
            pass
        finally:
            worker.closed = True
            if worker is self.current:
                self.ready.clear()  # new invocations wait for the replacement instead of a dead stream
            self._fail_pending(worker, worker.killed_for or "the worker closed its stream")

    def _rpc_log(self, log: Any) -> None:
        if log.log_category == protos.RpcLog.System and log.level < SYSTEM_LOG_MIN_LEVEL:
            return
        text = log.message
        if log.exception.message:
            text = f"{text}\n{log.exception.stack_trace or log.exception.message}".strip()
        suffix = f" (Id={log.invocation_id})" if log.invocation_id else ""
        level = LEVEL_NAMES.get(log.level, "Information")
        self.log(f"{level}: {log.category}: {text}{suffix}" if log.level >= 3 else f"{text}{suffix}")

    async def _console(self, pipe: asyncio.StreamReader, worker: WorkerProcess) -> None:
        """Worker stdout/stderr (print(), a crash's traceback) become host log lines."""
        while True:
            line = await pipe.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text.startswith(CONSOLE_PREFIX):
                text = text[len(CONSOLE_PREFIX) :].strip()
            if text:
                self.log(f"Worker {worker.process.pid}: {text}")

    async def _send(self, worker: WorkerProcess, message: Any) -> None:
        outgoing = await worker.stream_ready
        outgoing.put_nowait(message)

    async def _request(self, worker: WorkerProcess, message: Any, timeout_s: float) -> Any:
        message.request_id = str(uuid.uuid4())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[message.request_id] = future
        await self._send(worker, message)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise WorkerError(f"the worker did not answer {message.WhichOneof('content')} in {timeout_s:g} s") from exc

    def _fail_pending(self, worker: WorkerProcess, reason: str) -> None:
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(WorkerError(reason))
        worker.pending.clear()

    async def invoke(
        self,
        name: str,
        input_data: list[Any],
        trigger_metadata: dict[str, Any],
        *,
        invocation_id: str,
        timeout_s: float,
        trace_context: Any = None,
    ) -> Any:
        """Run one invocation; raise TimeoutError after ``timeout_s`` (the worker is then replaced).
        ``trace_context``: the ``RpcTraceContext`` of the host's span for it (none: the field stays empty)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=timeout_s)
        except TimeoutError as exc:
            raise WorkerError("no worker is running (it failed to restart)") from exc
        worker = self.current
        assert worker is not None
        request = protos.InvocationRequest(
            invocation_id=invocation_id,
            function_id=self.function_ids[name],
            input_data=input_data,
            trigger_metadata=trigger_metadata,
            trace_context=trace_context,
        )
        if worker.closed:  # it died after `ready` was awaited; nothing will answer
            raise WorkerError(worker.killed_for or "the worker process exited")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[invocation_id] = future
        await self._send(worker, protos.StreamingMessage(request_id=invocation_id, invocation_request=request))
        try:
            message = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            worker.pending.pop(invocation_id, None)
            raise
        return message.invocation_response


class WorkerPool:
    """``FUNCTIONS_WORKER_PROCESS_COUNT`` workers, each on a channel of its own (started, restarted and killed
    on its own, as the host does); an invocation goes to the ready worker with the fewest in flight."""

    def __init__(
        self,
        app_dir: Path,
        settings: dict[str, str],
        log: Callable[[str], None],
        **channel_options: Any,
    ) -> None:
        count = worker_process_count(settings, log)
        self.channels = [WorkerChannel(app_dir, settings, log, **channel_options) for _ in range(count)]
        self._in_flight = dict.fromkeys(range(count), 0)
        self._timed_out: dict[str, WorkerChannel] = {}

    @property
    def current(self) -> WorkerProcess | None:
        return self.channels[0].current

    @property
    def processes(self) -> list[WorkerProcess]:
        return [c.current for c in self.channels if c.current is not None]

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.channels)

    async def start(self) -> list[Any]:
        """Start every worker at once; the first one's metadata indexes the app (each loads the same)."""
        results = await asyncio.gather(*(c.start() for c in self.channels), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        return list(results[0])  # type: ignore[arg-type]

    async def invoke(
        self,
        name: str,
        input_data: list[Any],
        trigger_metadata: dict[str, Any],
        *,
        invocation_id: str,
        timeout_s: float,
        trace_context: Any = None,
    ) -> Any:
        ready = [i for i, c in enumerate(self.channels) if c.ready.is_set()] or list(self._in_flight)
        index = min(ready, key=lambda i: self._in_flight[i])
        channel = self.channels[index]
        self._in_flight[index] += 1
        try:
            return await channel.invoke(
                name,
                input_data,
                trigger_metadata,
                invocation_id=invocation_id,
                timeout_s=timeout_s,
                trace_context=trace_context,
            )
        except TimeoutError:
            self._timed_out[invocation_id] = channel
            raise
        finally:
            self._in_flight[index] -= 1

    async def kill_for(self, invocation_id: str, reason: str) -> None:
        """Kill the worker an invocation timed out in (functionTimeout): its channel starts a new one."""
        channel = self._timed_out.pop(invocation_id, None)
        if channel is not None:
            await channel.kill_current(reason)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.channels))


def worker_process_count(settings: dict[str, str], log: Callable[[str], None]) -> int:
    raw = settings.get(WORKER_PROCESS_COUNT_SETTING, "").strip()
    if not raw:
        return 1
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKER_PROCESSES:
        log(f"{WORKER_PROCESS_COUNT_SETTING}={raw!r} is not a number from 1 to {MAX_WORKER_PROCESSES}; using 1")
        return 1
    return count


def _raise_on_failure(result: Any, what: str) -> None:
    if result.status != protos.StatusResult.Success:
        detail = result.exception.message or result.result or "no reason given"
        raise IndexingError(f"{what}: {detail}")


def raw_bindings(metadata: Any) -> list[dict[str, Any]]:
    """The decorators' binding properties, exactly as the worker reported them."""
    return [json.loads(text) for text in metadata.raw_bindings]
