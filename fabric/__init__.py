"""The small torch-free, grpc-free library the three tiers use to talk over ZeroMQ."""
