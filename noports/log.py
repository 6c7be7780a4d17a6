"""Logging for every program: log-safe text, the text and JSON formatters, and the setup.

The bottom layer (L0): any module may import it, and it imports nothing of noports. The CLIs
call :func:`setup_logging`; libraries only log through named loggers and :func:`escape` what
a peer sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time

_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def escape(text: str, limit: int = 512) -> str:
    """Log-safe text: control characters escaped, length capped (reliability T10)."""
    s = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return s if len(s) <= limit else s[:limit] + "..."


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = escape(record.getMessage(), 4096)
        return f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {msg}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            d.update(extra)
        return json.dumps(d, ensure_ascii=True, default=str)


def setup_logging(args: argparse.Namespace | None = None, *, level: int | None = None) -> None:
    if level is None:
        level = logging.WARNING
        if args is not None and getattr(args, "verbose", False):
            level = logging.INFO
        if args is not None and getattr(args, "debug", False):
            level = logging.DEBUG
    fmt = getattr(args, "log_format", "text") if args is not None else "text"
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)
