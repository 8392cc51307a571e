"""devstack's FunctionRpc subset: the committed modules are what the .proto generates, and the numbers the
host and worker put on the wire are the published protocol's (Azure/azure-functions-language-worker-protobuf,
FunctionRpc.proto), so a peer built from the full file reads them the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.rpc import function_rpc_pb2 as protos
from devstack.rpc.generate import generate

pytestmark = pytest.mark.unit

RPC = Path(__file__).resolve().parents[2] / "devstack" / "rpc"

# (message, field) -> number, from the published FunctionRpc.proto and NullableTypes.proto.
PUBLISHED_FIELD_NUMBERS = {
    ("StreamingMessage", "request_id"): 1,
    ("StreamingMessage", "start_stream"): 20,
    ("StreamingMessage", "worker_init_request"): 17,
    ("StreamingMessage", "worker_init_response"): 16,
    ("StreamingMessage", "worker_terminate"): 14,
    ("StreamingMessage", "worker_status_request"): 12,
    ("StreamingMessage", "worker_status_response"): 13,
    ("StreamingMessage", "function_load_request"): 8,
    ("StreamingMessage", "function_load_response"): 9,
    ("StreamingMessage", "invocation_request"): 4,
    ("StreamingMessage", "invocation_response"): 5,
    ("StreamingMessage", "invocation_cancel"): 21,
    ("StreamingMessage", "rpc_log"): 2,
    ("StreamingMessage", "function_environment_reload_request"): 25,
    ("StreamingMessage", "function_environment_reload_response"): 26,
    ("StreamingMessage", "functions_metadata_request"): 29,
    ("StreamingMessage", "function_metadata_response"): 30,
    ("StartStream", "worker_id"): 2,
    ("WorkerInitRequest", "host_version"): 1,
    ("WorkerInitRequest", "capabilities"): 2,
    ("WorkerInitRequest", "worker_directory"): 4,
    ("WorkerInitRequest", "function_app_directory"): 5,
    ("WorkerInitResponse", "capabilities"): 2,
    ("WorkerInitResponse", "result"): 3,
    ("WorkerInitResponse", "worker_metadata"): 4,
    ("StatusResult", "status"): 4,
    ("StatusResult", "result"): 1,
    ("StatusResult", "exception"): 2,
    ("StatusResult", "logs"): 3,
    ("FunctionLoadRequest", "function_id"): 1,
    ("FunctionLoadRequest", "metadata"): 2,
    ("FunctionLoadResponse", "function_id"): 1,
    ("FunctionLoadResponse", "result"): 2,
    ("RpcFunctionMetadata", "name"): 4,
    ("RpcFunctionMetadata", "directory"): 1,
    ("RpcFunctionMetadata", "script_file"): 2,
    ("RpcFunctionMetadata", "entry_point"): 3,
    ("RpcFunctionMetadata", "bindings"): 6,
    ("RpcFunctionMetadata", "raw_bindings"): 10,
    ("RpcFunctionMetadata", "function_id"): 13,
    ("RpcFunctionMetadata", "retry_options"): 15,
    ("RpcFunctionMetadata", "properties"): 16,
    ("FunctionsMetadataRequest", "function_app_directory"): 1,
    ("FunctionMetadataResponse", "function_metadata_results"): 1,
    ("FunctionMetadataResponse", "result"): 2,
    ("FunctionMetadataResponse", "use_default_metadata_indexing"): 3,
    ("InvocationRequest", "invocation_id"): 1,
    ("InvocationRequest", "function_id"): 2,
    ("InvocationRequest", "input_data"): 3,
    ("InvocationRequest", "trigger_metadata"): 4,
    ("InvocationRequest", "trace_context"): 5,
    ("InvocationRequest", "retry_context"): 6,
    ("InvocationResponse", "invocation_id"): 1,
    ("InvocationResponse", "output_data"): 2,
    ("InvocationResponse", "return_value"): 4,
    ("InvocationResponse", "result"): 3,
    ("TypedData", "string"): 1,
    ("TypedData", "json"): 2,
    ("TypedData", "bytes"): 3,
    ("TypedData", "stream"): 4,
    ("TypedData", "http"): 5,
    ("TypedData", "int"): 6,
    ("TypedData", "double"): 7,
    ("TypedData", "collection_bytes"): 8,
    ("TypedData", "collection_string"): 9,
    ("ParameterBinding", "name"): 1,
    ("ParameterBinding", "data"): 2,
    ("RpcLog", "invocation_id"): 1,
    ("RpcLog", "category"): 2,
    ("RpcLog", "level"): 3,
    ("RpcLog", "message"): 4,
    ("RpcLog", "exception"): 6,
    ("RpcLog", "log_category"): 8,
    ("RpcException", "stack_trace"): 1,
    ("RpcException", "message"): 2,
    ("RpcException", "source"): 3,
    ("RpcHttp", "method"): 1,
    ("RpcHttp", "url"): 2,
    ("RpcHttp", "headers"): 3,
    ("RpcHttp", "body"): 4,
    ("RpcHttp", "params"): 10,
    ("RpcHttp", "status_code"): 12,
    ("RpcHttp", "query"): 15,
    ("RpcHttp", "cookies"): 19,
    ("NullableString", "value"): 1,
}


def test_the_committed_modules_are_what_the_proto_generates(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("function_rpc_pb2.py", "function_rpc_pb2_grpc.py"):
        fresh = (tmp_path / "devstack" / "rpc" / name).read_text()
        assert (RPC / name).read_text() == fresh, f"devstack/rpc/{name} is stale: run python -m devstack.rpc.generate"


@pytest.mark.parametrize(("message", "field", "number"), [(m, f, n) for (m, f), n in PUBLISHED_FIELD_NUMBERS.items()])
def test_field_numbers_are_the_published_protocols(message: str, field: str, number: int) -> None:
    descriptor = protos.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number


def test_the_service_path_is_the_published_one() -> None:
    service = protos.DESCRIPTOR.services_by_name["FunctionRpc"]
    assert service.full_name == "AzureFunctionsRpcMessages.FunctionRpc"
    assert [m.name for m in service.methods] == ["EventStream"]


def test_status_and_direction_enums_keep_their_wire_values() -> None:
    assert (protos.StatusResult.Failure, protos.StatusResult.Success, protos.StatusResult.Cancelled) == (0, 1, 2)
    assert (protos.BindingInfo.out, protos.BindingInfo.inout) == (1, 2)
    assert (protos.RpcLog.Information, protos.RpcLog.Error, protos.RpcLog.System) == (2, 4, 1)
