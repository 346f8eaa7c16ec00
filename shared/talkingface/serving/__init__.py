"""Service plumbing shared by every talkingface gRPC service: server bootstrap, health,
reflection, metrics, graceful shutdown and the Ray Serve gRPC ingress adapter."""
