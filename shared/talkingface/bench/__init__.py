"""Benchmarks behind `talkingface bench STAGE --json` (speed is measured here, not in tests)."""
