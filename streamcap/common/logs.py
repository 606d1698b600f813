"""Logging, set up in one place: timestamp, level, service role and instance id on every line.

    setup_logging("downloader", level="INFO")
    # 2026-11-30T01:02:03.456Z INFO  downloader/host-1234 downloader.service: claimed part relaion:17

Lines go to stderr unbuffered, so `docker compose logs` interleaves services correctly.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from streamcap.common.secrets import RedactingFilter

_FORMAT = "%(asctime)s %(levelname)-5s %(role)s/%(instance)s %(name)s: %(message)s"


def first_line(e: BaseException | None, limit: int | None = None, *, default: str | None = None) -> str:
    """An exception as one line for a log or a failure reason: its message's first line (at
    most `limit` characters), or, when the message is empty, `default` (its type's name unless given)."""
    text = str(e).strip() if e is not None else ""
    if not text:
        return type(e).__name__ if default is None else default
    return text.splitlines()[0][:limit]


def instance_id() -> str:
    """Stable id of this process for logs and heartbeats: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class _ContextFilter(logging.Filter):
    def __init__(self, role: str, instance: str) -> None:
        super().__init__()
        self.role, self.instance = role, instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.role, record.instance = self.role, self.instance
        return True


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def setup_logging(role: str, level: str = "INFO", instance: str | None = None) -> None:
    """Configure the root logger for one process of service `role`; safe to call again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter(_FORMAT))
    handler.addFilter(_ContextFilter(role, instance or instance_id()))
    handler.addFilter(RedactingFilter())  # no password reaches a log line
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that chat at INFO drown the service's own lines.
    for noisy in ("urllib3", "asyncio", "PIL", "matplotlib", "wandb", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
