"""Landmark projection (GeneFace++ §4.2): per-avatar FAISS index + locally linear embedding.

See `talkingface.landmarks.projection` and docs/landmark_projection.md.
"""

from talkingface.landmarks.projection import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    ProjectionIndex,
    ProjectionResult,
    lle_weights,
)

__all__ = ["DEFAULT_ALPHA", "DEFAULT_K", "ProjectionIndex", "ProjectionResult", "lle_weights"]
