"""Tandem: LLM serving with disaggregated prefill and decode. ``tandem.cli`` is the entry point."""

import os

# Tandem's processes fork only to exec (redis-server, workers). gRPC's fork handlers, installed by
# default, can abort such a child when other threads are inside gRPC at that moment (seen: the
# embedded Redis dying with SIGABRT while a test process ran a gRPC server); gRPC documents this
# setting for exactly the fork-then-exec case. It must be set before gRPC initialises.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
