"""Generated protobuf/gRPC stubs of the bitmesh.v1 API (see bitmesh/protogen.py)."""
