"""FunctionRpc: the .proto devstack uses and the modules generated from it (python -m devstack.rpc.generate)."""
