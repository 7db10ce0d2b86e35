"""gRPC code for Salesforce's Pub/Sub API, generated from the public `pubsub_api.proto` (CC0, from the
forcedotcom/pub-sub-api repository, unchanged) and committed so no build step is needed.

Regenerate after updating the proto (grpcio-tools from PyPI), from this directory:

    python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. pubsub_api.proto
    sed -i 's/^import pubsub_api_pb2 as/from . import pubsub_api_pb2 as/' pubsub_api_pb2_grpc.py

The descriptor keeps the proto's own file name (`pubsub_api.proto`), so these modules can share a process with
public clients that ship the same generated code.
"""
