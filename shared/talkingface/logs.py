"""Process-wide logging: one JSON object per line (or plain text for people).

Services log to stdout, where a container's logs are collected; one-shot commands (`train`,
`eval`) log to stderr, so that their stdout holds only their result (`--json`)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, service, extras, exc."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.service:
            entry["service"] = self.service
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str = "", level: str = "INFO", fmt: str = "json",
                      stderr: bool = False) -> None:  # fmt: skip
    """Route all logging to stdout (stderr with `stderr`) in the chosen format; safe to call
    more than once."""
    handler = logging.StreamHandler(sys.stderr if stderr else sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        prefix = f"[{service}] " if service else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
