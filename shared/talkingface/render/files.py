"""The renderer's file names in an avatar bundle (`renderer/…`), without torch: the broker
checks a published version for them and must not load the renderer's code to do so."""

from __future__ import annotations

RENDERER_DIR = "renderer"
WEIGHTS = "model.safetensors"
TRACK = "track.safetensors"
CONFIG = "config.json"
FILES = (WEIGHTS, TRACK, CONFIG)
RENDERER_FILES = tuple(f"{RENDERER_DIR}/{name}" for name in FILES)
