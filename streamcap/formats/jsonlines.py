"""Strict reading of JSON Lines files made by people (caption corpora, evaluation sets).

The downloader reads its sources leniently instead: there a bad line is a bad row, recorded
as a failure of its part, not an error that stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_objects(path: Path, error: type[Exception]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each object of `path` with where it stands ("path:line"); blank lines are skipped.

    A line that is not a JSON object raises `error` with a message naming the line.
    """
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(value, dict):
                raise error(f"{where}: expected an object, got {type(value).__name__}")
            yield where, value
