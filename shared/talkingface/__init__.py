"""talkingface: audio-driven 3-D talking-face generation (GeneFace++) as gRPC microservices."""

__version__ = "0.1.0"
