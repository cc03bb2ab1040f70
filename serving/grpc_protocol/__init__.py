"""The Open Inference Protocol's gRPC messages and service, generated from
``grpc_predict_v2.proto`` by ``scripts/generate_grpc_protocol.py`` (do not edit the modules)."""
