"""The frontend tier: a Triton-compatible gRPC server that forwards requests to brokers. No torch."""
