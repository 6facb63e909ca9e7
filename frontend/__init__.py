"""The frontend tier: a Triton-compatible gRPC server forwarding to brokers. No torch."""
