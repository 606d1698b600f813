"""Passwords stay in the process: redaction for log lines, saved configs, status and W&B.

    redact("connecting to redis://:s3cr%2Ft@redis:6379/0")   # 'connecting to redis://:***@redis:6379/0'
    with_password("redis://redis:6379/0", "a/b+c@d")          # 'redis://:a%2Fb%2Bc%40d@redis:6379/0'

The Redis password can also come on its own, as `REDIS_PASSWORD` (what compose passes): any
character is then fine, since it is percent-encoded into the URL here rather than by a person.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

PASSWORD_ENV = "REDIS_PASSWORD"
MASK = "***"

# scheme://[user]:password@ — the password ends at the last '@' before the host part.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)(?P<password>[^\s'\"]+?)@(?=[^@\s'\"]*(?:[\s'\"]|$))", re.IGNORECASE
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password, and the configured password itself, replaced by ***."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)
    password = os.environ.get(PASSWORD_ENV)
    if password and len(password) >= 4:  # a one-letter "password" would mask half of every line
        for form in {password, quote(password, safe="")}:
            text = text.replace(form, MASK)
    return text


def with_password(url: str, password: str | None) -> str:
    """`url` carrying `password` (percent-encoded) when it has none of its own."""
    if not password:
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":  # unix:///run/redis.sock?db=0: the password goes in the query
        if "password=" in parts.query:
            return url
        return f"{url}{'&' if parts.query else '?'}password={quote(password, safe='')}"
    if parts.password is not None:
        return url
    user = quote(parts.username, safe="") if parts.username else ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments included) with `redact` before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = redact(str(record.exc_info[1]))
            if text != str(record.exc_info[1]):
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
