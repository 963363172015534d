"""Named loggers and the two log formats (readable text, one JSON object a line).

Loggers: ``essaim.<component>`` for each process, ``essaim.access`` for the
request log. Call :func:`configure` once, from an entry point. Every line
written while a request or an event is handled carries its ``request_id``,
``trace_id`` and ``span_id`` (:class:`core.trace.LogContext`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from core.trace import LogContext

__all__ = ["configure", "get"]

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg`` and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(fmt: str = "text", level: str = "info") -> None:
    """Send every ``essaim`` log to stderr in ``fmt`` ("text" or "json") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(_context)s", "%H:%M:%S"
            )
        )
    handler.addFilter(LogContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("essaim").setLevel(level.upper())
    # aiohttp's own access log is replaced by ours where one is wanted.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str) -> logging.Logger:
    """The logger ``essaim.<name>``."""
    return logging.getLogger(f"essaim.{name}")
