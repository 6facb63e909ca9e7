"""The broker tier: routes requests from frontends to workers over ZeroMQ (no torch, no grpc)."""
