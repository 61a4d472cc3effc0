"""The Open Inference Protocol (V2) gRPC model server."""
