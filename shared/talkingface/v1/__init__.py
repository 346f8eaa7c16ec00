"""Generated gRPC/protobuf code for talkingface.v1 (make protos); do not edit."""
