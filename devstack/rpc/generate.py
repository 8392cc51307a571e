"""Generate ``function_rpc_pb2.py`` and ``function_rpc_pb2_grpc.py`` from ``function_rpc.proto`` with the
pinned grpcio-tools. The modules are committed (so nothing compiles at install time); a unit test checks
they are what this produces."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "devstack/rpc/function_rpc.proto"


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    code = protoc.main(
        ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", PROTO]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit status {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
