"""Object key rules: what a valid key is, how to build one, and how user strings become segments.

Rule: object keys never come from unchecked user strings. A key is built only from constants,
ids the system generated, and segments produced by `user_segment`, and every store operation
re-validates the key it is given, so a key cannot escape its prefix (no `..`, no absolute
paths, no backslashes) on either the local-directory store or S3/MinIO.

A key is a `/`-separated list of segments; each segment matches
`[A-Za-z0-9][A-Za-z0-9._-]{0,127}` and the whole key is at most 1024 characters. Segments
cannot start with `.`, so names such as `.tmp-…` or `.staging` are free for a store's own
bookkeeping and can never collide with, or be addressed as, an object.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from talkingface.storage.errors import InvalidKey

MAX_KEY_LENGTH = 1024
MAX_SEGMENT_LENGTH = 128
SEGMENT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SEGMENT_RE = re.compile(SEGMENT_PATTERN)

# user_segment output: `{slug}-{digest}`; the slug is only a readable hint, the digest is what
# makes the segment unique (48 bits of sha256).
USER_SLUG_MAX = 48
USER_DIGEST_HEX = 12


def _segment_problem(segment: str) -> str | None:
    """Why `segment` is not a valid segment, or None when it is."""
    if segment == "":
        return "empty segment (leading, trailing or doubled '/')"
    if segment in (".", ".."):
        return f"{segment!r} segments are not allowed (path traversal)"
    if "\\" in segment:
        return "backslashes are not allowed"
    if any(ch.isspace() for ch in segment):
        return "whitespace is not allowed"
    if segment.startswith("."):
        return f"segment {segment!r} starts with '.' (hidden names are reserved for the store)"
    if len(segment) > MAX_SEGMENT_LENGTH:
        return f"segment longer than {MAX_SEGMENT_LENGTH} characters"
    if not _SEGMENT_RE.fullmatch(segment):
        return f"segment {segment!r} must match {SEGMENT_PATTERN}"
    return None


def validate_segment(segment: str) -> str:
    """Return `segment` unchanged if it is one valid key segment (no '/'), else raise InvalidKey."""
    if not isinstance(segment, str):
        raise InvalidKey(segment, f"a segment must be a str, not {type(segment).__name__}")
    if "/" in segment:
        raise InvalidKey(segment, "a single segment cannot contain '/'")
    problem = _segment_problem(segment)
    if problem:
        raise InvalidKey(segment, problem)
    return segment


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise InvalidKey saying why."""
    if not isinstance(key, str):
        raise InvalidKey(key, f"a key must be a str, not {type(key).__name__}")
    if key == "":
        raise InvalidKey(key, "the key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key[:64] + "…", f"longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidKey(key, "keys are relative: no leading '/'")
    if key.endswith("/"):
        raise InvalidKey(key, "no trailing '/'")
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem:
            raise InvalidKey(key, problem)
    return key


def validate_prefix(prefix: str, *, allow_empty: bool = False) -> str:
    """Validate a prefix: a valid key naming a 'folder' (or "" for everything when allowed)."""
    if allow_empty and prefix == "":
        return prefix
    return validate_key(prefix)


def join_key(*parts: str) -> str:
    """Join key parts with '/', validating every segment of every part and the joined length.

    A part may itself be a multi-segment key (`join_key("avatars/t1", "v1", "a.bin")`); each
    of its segments is checked. Raw user strings must go through `user_segment` first.
    """
    if not parts:
        raise InvalidKey("", "join_key needs at least one part")
    for part in parts:
        validate_key(part)
    return validate_key("/".join(parts))


def user_segment(raw: str) -> str:
    """Turn an arbitrary user-supplied string into a safe, unique key segment.

    The result is `{slug}-{digest}`: a lowercase slug of the string's safe characters (at most
    48, possibly empty) for readability, plus the first 12 hex characters of sha256(raw). Two
    different raw strings that slug identically still get different segments, and the raw
    string itself never becomes a key: `user_segment("../../etc/passwd")` is
    `"etc-passwd-<digest>"`.
    """
    if not isinstance(raw, str):
        raise InvalidKey(raw, f"a user string must be a str, not {type(raw).__name__}")
    if raw == "":
        raise InvalidKey(raw, "an empty name cannot become a key segment")
    # surrogatepass: a lone surrogate (possible from JSON or filesystem decoding) still hashes.
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:USER_DIGEST_HEX]
    ascii_text = (
        unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii").lower()
    )
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_text)
    # Runs of punctuation carry no meaning, and `..` would look like traversal in logs.
    slug = re.sub(r"[._-]{2,}", "-", slug).strip("._-")[:USER_SLUG_MAX].strip("._-")
    return validate_segment(f"{slug}-{digest}" if slug else digest)
